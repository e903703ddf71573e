//! The `herald` command: parses the command line, loads settings and calls
//! into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::Settings;
use herald::directory::Directory;
use herald::server;

/// herald — an SSE event relay.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Settings file (default: ./settings.toml when present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default); applies pending migrations first.
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Manage maps.
    Map {
        #[command(subcommand)]
        command: MapCommand,
    },
}

#[derive(Subcommand)]
enum MapCommand {
    /// Create a map and print its first API key (shown once).
    Create {
        slug: String,
        /// Display name (default: the slug).
        #[arg(long)]
        name: Option<String>,
    },
}

#[actix_web::main]
async fn main() -> ExitCode {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // actix-http logs every request it cannot parse (a stranger's bytes) at
    // ERROR; herald answers those in JSON and logs them at DEBUG itself
    // (`http::layer_errors`). Naming the module in RUST_LOG overrides this.
    if !std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains("actix_http")) {
        logger.filter_module("actix_http::h1::dispatcher", log::LevelFilter::Off);
    }
    logger.init();
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("herald: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => server::serve(settings).await.map_err(|e| e.to_string()),
        Command::Migrate => server::open_store(&settings)
            .await
            .map(|_| println!("migrations applied"))
            .map_err(|e| e.to_string()),
        Command::Map {
            command: MapCommand::Create { slug, name },
        } => create_map(&settings, &slug, name.as_deref()).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn create_map(settings: &Settings, slug: &str, name: Option<&str>) -> Result<(), String> {
    let store = server::open_store(settings)
        .await
        .map_err(|e| e.to_string())?;
    let directory = Directory::load(store, false)
        .await
        .map_err(|e| e.to_string())?;
    let (map, issued) = directory
        .create_map(slug, name, None)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "map_id:  {}\nslug:    {}\nkey_id:  {}\napi_key: {}",
        map.id, map.slug, issued.key.id, issued.secret
    );
    Ok(())
}
