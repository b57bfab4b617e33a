//! Services that talk to operators: the admin socket's command handler and the `/metrics`
//! endpoint.

mod deploy;
pub mod handler;
pub mod metrics_endpoint;
mod replies;
