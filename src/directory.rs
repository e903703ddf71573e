//! The directory of maps and API keys: the store is the truth, this is its
//! in-memory copy so that most requests resolve their map and key without a
//! query. Writes go to the store first, then here. Other processes write
//! too (other nodes, `herald map create`): a name or key not found here is
//! looked up in the store, and [`Directory::reload`] takes in every change
//! when the cluster says the directory changed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ulid::Ulid;

use crate::auth::{generate_secret, hash_secret, hashes_equal, SecretHash};
use crate::config::SeedMap;
use crate::event::parse_ulid;
use crate::store::{KeyRecord, MapRecord, SharedStore, StoreError};

/// Why a directory change was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("slug must match [a-z0-9][a-z0-9-]{{0,63}} and not be a ULID")]
    InvalidSlug,
    #[error("name must be 0 to 128 characters without control or invisible formatting characters")]
    InvalidName,
    #[error("a map with this slug already exists")]
    MapExists,
    #[error("no such map")]
    MapNotFound,
    #[error("no such key")]
    KeyNotFound,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for DirectoryError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict => Self::MapExists,
            other => Self::Store(other),
        }
    }
}

/// A new key as shown once to whoever created it.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key: KeyRecord,
    pub secret: String,
}

#[derive(Default)]
struct Inner {
    maps: HashMap<Ulid, Arc<MapRecord>>,
    slugs: HashMap<String, Ulid>,
    keys: HashMap<SecretHash, KeyRecord>,
}

/// Maps and keys, shared by every worker.
pub struct Directory {
    store: SharedStore,
    // A std RwLock: reads dominate, and no guard is ever held across `.await`.
    inner: RwLock<Inner>,
    /// Other processes serve this store too (a cluster): a key is checked
    /// against the store at every use, so a key revoked on another node is
    /// refused here as soon as that revocation returned.
    shared: bool,
}

/// Whether `slug` is acceptable for a new map.
pub fn is_valid_slug(slug: &str) -> bool {
    let bytes = slug.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && parse_ulid(slug).is_none()
}

/// Longest map name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Whether `name` is acceptable as a map's display name: no control
/// characters, nor the invisible ones that reorder or hide the text an
/// operator reads (bidirectional overrides, zero-width characters).
pub fn is_valid_name(name: &str) -> bool {
    name.chars().count() <= MAX_NAME_CHARS
        && !name
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
}

/// Unicode format characters that change how text around them is shown.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Inner {
    fn add_map(&mut self, map: Arc<MapRecord>) {
        if let Some(old) = self.maps.insert(map.id, Arc::clone(&map)) {
            self.slugs.remove(&old.slug);
        }
        self.slugs.insert(map.slug.clone(), map.id);
    }
}

impl Directory {
    async fn read_all(store: &SharedStore) -> Result<Inner, StoreError> {
        let (maps, keys) = store.load_directory().await?;
        let mut inner = Inner::default();
        for map in maps {
            inner.add_map(Arc::new(map));
        }
        for key in keys {
            inner.keys.insert(key.hash, key);
        }
        Ok(inner)
    }

    /// Loads every map and key from the store; `shared` when other
    /// processes serve it too.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn load(store: SharedStore, shared: bool) -> Result<Self, StoreError> {
        let inner = Self::read_all(&store).await?;
        Ok(Self {
            store,
            inner: RwLock::new(inner),
            shared,
        })
    }

    /// Reads everything again from the store (another process changed it).
    /// Returns the keys that were revoked.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn reload(&self) -> Result<Vec<Ulid>, StoreError> {
        let fresh = Self::read_all(&self.store).await?;
        let missing: Vec<KeyRecord> = self
            .read()
            .keys
            .values()
            .filter(|k| !fresh.keys.contains_key(&k.hash))
            .cloned()
            .collect();
        // A key created here after the read above began is not revoked:
        // only a key the store no longer has is.
        let mut revoked = Vec::new();
        let mut kept = Vec::new();
        for key in missing {
            match self.store.find_key(&key.hash).await? {
                Some(_) => kept.push(key),
                None => revoked.push(key.id),
            }
        }
        let mut fresh = fresh;
        for key in kept {
            fresh.keys.insert(key.hash, key);
        }
        for (id, map) in &self.read().maps {
            if !fresh.maps.contains_key(id) {
                // Created here meanwhile (maps are never deleted).
                fresh.add_map(Arc::clone(map));
            }
        }
        *self.write() = fresh;
        Ok(revoked)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written
        // (every write is a single insert or remove), so poisoning is ignored.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The map named by its id or slug, as known here.
    pub fn resolve(&self, id_or_slug: &str) -> Option<Arc<MapRecord>> {
        let inner = self.read();
        let id = match parse_ulid(id_or_slug) {
            Some(id) => id,
            None => *inner.slugs.get(id_or_slug)?,
        };
        inner.maps.get(&id).cloned()
    }

    /// The map named by its id or slug: as known here, else as the store
    /// has it now (created by another process).
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn find(&self, id_or_slug: &str) -> Result<Option<Arc<MapRecord>>, StoreError> {
        if let Some(map) = self.resolve(id_or_slug) {
            return Ok(Some(map));
        }
        self.fetch(id_or_slug).await
    }

    /// The map as the store has it now (its limits changed elsewhere).
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn fetch(&self, id_or_slug: &str) -> Result<Option<Arc<MapRecord>>, StoreError> {
        let Some(map) = self.store.find_map(id_or_slug).await? else {
            return Ok(None);
        };
        let map = Arc::new(map);
        self.write().add_map(Arc::clone(&map));
        Ok(Some(map))
    }

    /// The map with this id.
    pub fn map(&self, id: Ulid) -> Option<Arc<MapRecord>> {
        self.read().maps.get(&id).cloned()
    }

    /// The key whose secret this is, as known here. Looked up by SHA-256
    /// digest, then confirmed in constant time.
    pub fn key_for_secret(&self, secret: &str) -> Option<KeyRecord> {
        let hash = hash_secret(secret);
        let inner = self.read();
        inner
            .keys
            .get(&hash)
            .filter(|k| hashes_equal(&k.hash, &hash))
            .cloned()
    }

    /// The key whose secret this is: as known here, else as the store has
    /// it now (created by another process). In a cluster, always as the
    /// store has it now.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn find_key(&self, secret: &str) -> Result<Option<KeyRecord>, StoreError> {
        let known = self.key_for_secret(secret);
        if known.is_some() && !self.shared {
            return Ok(known);
        }
        let hash = hash_secret(secret);
        let Some(key) = self.store.find_key(&hash).await? else {
            // Revoked by another process. It stays in the copy until
            // `reload` finds it gone, which also ends its streams here.
            return Ok(None);
        };
        if !hashes_equal(&key.hash, &hash) {
            return Ok(None);
        }
        if self.map(key.map_id).is_none() {
            // The key's map is new here too.
            self.fetch(&key.map_id.to_string()).await?;
        }
        self.write().keys.insert(key.hash, key.clone());
        Ok(Some(key))
    }

    /// A map's keys, oldest first.
    pub fn keys_of(&self, map_id: Ulid) -> Vec<KeyRecord> {
        let mut keys: Vec<KeyRecord> = self
            .read()
            .keys
            .values()
            .filter(|k| k.map_id == map_id)
            .cloned()
            .collect();
        keys.sort_by_key(|k| k.id);
        keys
    }

    /// Maps ordered by id, a page of them, and how many there are.
    pub fn list(&self, limit: usize, offset: usize) -> (usize, Vec<Arc<MapRecord>>) {
        let inner = self.read();
        let mut maps: Vec<Arc<MapRecord>> = inner.maps.values().cloned().collect();
        maps.sort_by_key(|m| m.id);
        (
            maps.len(),
            maps.into_iter().skip(offset).take(limit).collect(),
        )
    }

    /// How many maps exist.
    pub fn map_count(&self) -> usize {
        self.read().maps.len()
    }

    /// Creates a map with a first key (random unless `secret` is given).
    ///
    /// # Errors
    /// An invalid or taken slug, or the store failing.
    pub async fn create_map(
        &self,
        slug: &str,
        name: Option<&str>,
        secret: Option<&str>,
    ) -> Result<(Arc<MapRecord>, IssuedKey), DirectoryError> {
        if !is_valid_slug(slug) {
            return Err(DirectoryError::InvalidSlug);
        }
        if !name.is_none_or(is_valid_name) {
            return Err(DirectoryError::InvalidName);
        }
        if self.read().slugs.contains_key(slug) {
            return Err(DirectoryError::MapExists);
        }
        let map = MapRecord {
            id: Ulid::generate(),
            slug: slug.to_owned(),
            name: name.unwrap_or(slug).to_owned(),
            created_ms: now_ms(),
            max_connections: None,
            max_connections_per_key: None,
        };
        let issued = new_key(map.id, secret);
        self.store.insert_map(&map, &issued.key).await?;
        let map = Arc::new(map);
        let mut inner = self.write();
        inner.add_map(Arc::clone(&map));
        inner.keys.insert(issued.key.hash, issued.key.clone());
        Ok((map, issued))
    }

    /// Adds a random key to a map.
    ///
    /// # Errors
    /// Unknown map, or the store failing.
    pub async fn add_key(&self, map_id: Ulid) -> Result<IssuedKey, DirectoryError> {
        let issued = new_key(map_id, None);
        self.store.insert_key(&issued.key).await?;
        self.write()
            .keys
            .insert(issued.key.hash, issued.key.clone());
        Ok(issued)
    }

    /// Revokes a key: it stops working at once.
    ///
    /// # Errors
    /// Unknown key (for this map), or the store failing.
    pub async fn revoke_key(&self, map_id: Ulid, key_id: Ulid) -> Result<(), DirectoryError> {
        if !self.store.delete_key(map_id, key_id).await? {
            return Err(DirectoryError::KeyNotFound);
        }
        self.write().keys.retain(|_, k| k.id != key_id);
        Ok(())
    }

    /// Sets a map's connection limits (`None` = configured default).
    ///
    /// # Errors
    /// Unknown map, or the store failing.
    pub async fn set_limits(
        &self,
        map_id: Ulid,
        max_connections: Option<u64>,
        max_connections_per_key: Option<u64>,
    ) -> Result<Arc<MapRecord>, DirectoryError> {
        let current = self
            .fetch(&map_id.to_string())
            .await?
            .ok_or(DirectoryError::MapNotFound)?;
        self.store
            .update_map_limits(map_id, max_connections, max_connections_per_key)
            .await?;
        let updated = Arc::new(MapRecord {
            max_connections,
            max_connections_per_key,
            ..(*current).clone()
        });
        self.write().add_map(Arc::clone(&updated));
        Ok(updated)
    }

    /// Creates the `[[maps]]` of the settings that are missing, each with
    /// its key. A map that exists is left as it is: from its creation on,
    /// its keys are the admin API's, so a seeded key revoked there stays
    /// revoked across restarts.
    ///
    /// # Errors
    /// An invalid slug, or the store failing.
    pub async fn seed(&self, seeds: &[SeedMap]) -> Result<(), DirectoryError> {
        for seed in seeds {
            if self.find(&seed.slug).await?.is_some() {
                continue;
            }
            match self
                .create_map(&seed.slug, seed.name.as_deref(), Some(&seed.api_key))
                .await
            {
                Ok(_) => log::info!("seeded map `{}`", seed.slug),
                // Another node seeded it at the same moment.
                Err(DirectoryError::MapExists) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

fn new_key(map_id: Ulid, secret: Option<&str>) -> IssuedKey {
    let secret = secret.map_or_else(|| generate_secret("hk_"), str::to_owned);
    let key = KeyRecord {
        id: Ulid::generate(),
        map_id,
        hash: hash_secret(&secret),
        created_ms: now_ms(),
    };
    IssuedKey { key, secret }
}

#[cfg(test)]
mod tests {
    use super::{is_valid_name, is_valid_slug};

    #[test]
    fn name_rules() {
        let longest = "é".repeat(128);
        for ok in ["", "Tenant 42", "Ünïcode ✓", longest.as_str()] {
            assert!(is_valid_name(ok), "{ok}");
        }
        let too_long = "a".repeat(129);
        for bad in [
            "a\u{0}b",
            "line\nbreak",
            "\u{202e}evil",
            "zero\u{200b}width",
            "del\u{7f}",
            "\u{85}",
            too_long.as_str(),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn slug_rules() {
        for ok in ["demo", "a", "0-map", "tenant-42"] {
            assert!(is_valid_slug(ok), "{ok}");
        }
        let too_long = "a".repeat(65);
        for bad in [
            "",
            "-a",
            "Demo",
            "a_b",
            "a.b",
            "01jd0000000000000000000000",
            too_long.as_str(),
        ] {
            assert!(!is_valid_slug(bad), "{bad}");
        }
    }
}
