//! The actors of the relay:
//!
//! - [`hub`]: one `MapHub` per map (plus the admin firehose) fans committed
//!   events out to subscribed sessions and keeps a bounded hot history.
//! - [`feed`]: the `Feed` hands every committed event, whichever node
//!   committed it, to the hubs in id order, reading the store when needed.
//! - [`persistence`]: the `Persistence` actor group-commits published events
//!   and acknowledges publishers only after their batch committed.
//! - [`session`]: one `Session` per SSE stream; its body writes the frames.

pub mod feed;
pub mod hub;
pub mod persistence;
pub mod session;
