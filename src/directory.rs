//! The directory of maps and API keys: the store is the truth, this is its
//! in-memory copy so that every request resolves its map and key without a
//! query. Writes go to the store first, then here.

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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Directory {
    /// Loads every map and key from the store.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn load(store: SharedStore) -> Result<Self, StoreError> {
        let (maps, keys) = store.load_directory().await?;
        let mut inner = Inner::default();
        for map in maps {
            inner.slugs.insert(map.slug.clone(), map.id);
            inner.maps.insert(map.id, Arc::new(map));
        }
        for key in keys {
            inner.keys.insert(key.hash, key);
        }
        Ok(Self {
            store,
            inner: RwLock::new(inner),
        })
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

    /// The map named by its id or slug.
    pub fn resolve(&self, id_or_slug: &str) -> Option<Arc<MapRecord>> {
        let inner = self.read();
        let id = match parse_ulid(id_or_slug) {
            Some(id) => id,
            None => *inner.slugs.get(id_or_slug)?,
        };
        inner.maps.get(&id).cloned()
    }

    /// The map with this id.
    pub fn map(&self, id: Ulid) -> Option<Arc<MapRecord>> {
        self.read().maps.get(&id).cloned()
    }

    /// The key whose secret this is. Looked up by SHA-256 digest, then
    /// confirmed in constant time.
    pub fn key_for_secret(&self, secret: &str) -> Option<KeyRecord> {
        let hash = hash_secret(secret);
        let inner = self.read();
        inner
            .keys
            .get(&hash)
            .filter(|k| hashes_equal(&k.hash, &hash))
            .cloned()
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
        inner.slugs.insert(map.slug.clone(), map.id);
        inner.maps.insert(map.id, Arc::clone(&map));
        inner.keys.insert(issued.key.hash, issued.key.clone());
        Ok((map, issued))
    }

    /// Adds a random key to a map.
    ///
    /// # Errors
    /// Unknown map, or the store failing.
    pub async fn add_key(&self, map_id: Ulid) -> Result<IssuedKey, DirectoryError> {
        if self.map(map_id).is_none() {
            return Err(DirectoryError::MapNotFound);
        }
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
        let current = self.map(map_id).ok_or(DirectoryError::MapNotFound)?;
        self.store
            .update_map_limits(map_id, max_connections, max_connections_per_key)
            .await?;
        let updated = Arc::new(MapRecord {
            max_connections,
            max_connections_per_key,
            ..(*current).clone()
        });
        self.write().maps.insert(map_id, Arc::clone(&updated));
        Ok(updated)
    }

    /// Creates the `[[maps]]` of the settings that are missing, and adds
    /// their key to an existing map when it is not there yet.
    ///
    /// # Errors
    /// An invalid slug, or the store failing.
    pub async fn seed(&self, seeds: &[SeedMap]) -> Result<(), DirectoryError> {
        for seed in seeds {
            match self.resolve(&seed.slug) {
                None => {
                    self.create_map(&seed.slug, seed.name.as_deref(), Some(&seed.api_key))
                        .await?;
                    log::info!("seeded map `{}`", seed.slug);
                }
                Some(map) if self.key_for_secret(&seed.api_key).is_none() => {
                    let issued = new_key(map.id, Some(&seed.api_key));
                    self.store.insert_key(&issued.key).await?;
                    self.write().keys.insert(issued.key.hash, issued.key);
                }
                Some(_) => {}
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
    use super::is_valid_slug;

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
