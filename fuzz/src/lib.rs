//! Shared helpers of herald's fuzz targets: the reference models (and the
//! synchronous `eventsource-stream` driver) of `tests/reference`.

#[path = "../../tests/reference/mod.rs"]
pub mod reference;

pub use reference::eventsource_parse;
