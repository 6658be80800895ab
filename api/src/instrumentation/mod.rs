//! What the api tells about itself: Prometheus metrics (`metrics`), per-request
//! HTTP figures and log context (`requests`), and the background tasks that
//! ship statistics rollups and operation-log batches to the queue and post
//! the metrics report to the monitoring service (`background`). Nothing
//! here runs on the request path beyond counting in memory.

pub mod background;
pub mod metrics;
pub mod requests;
