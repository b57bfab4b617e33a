//! The admin socket: Bascule's [`Handler`] for the admin protocol, served as a Pingora
//! background service. It turns commands into [`Control`] calls and the snapshot into the
//! admin crate's reply types; every change and its side effects (drain watch included) live
//! in [`Control`].

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bascule_admin::{
    Command, DrainReply, Handler, HelpReply, Progress, ReloadReply, Reply, SetReply, Weights,
    WeightsReply, HELP,
};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::admin::deploy;
use crate::admin::replies::{
    flip_of, flip_reply, health, live, routing_of, slot_state, slot_status, stats, status,
};
use crate::control::{Applied, Control};

/// Longest `drain --wait` or `deploy` step when no `--timeout` is given.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Answers admin commands from the routing snapshot.
pub struct AdminHandler {
    control: Arc<Control>,
}

impl AdminHandler {
    /// A handler over `control`.
    pub fn new(control: Arc<Control>) -> Arc<AdminHandler> {
        Arc::new(AdminHandler { control })
    }
}

#[async_trait]
impl Handler for AdminHandler {
    async fn handle(&self, cmd: Command) -> Result<Reply, String> {
        self.handle_with_progress(cmd, Progress::none()).await
    }

    async fn handle_with_progress(
        &self,
        cmd: Command,
        progress: Progress,
    ) -> Result<Reply, String> {
        let c = &self.control;
        let reply = match cmd {
            Command::Status => {
                let mut s = status(&c.load());
                s.warnings.extend(c.start_warning().map(str::to_string));
                if let Some(link) = c.cluster() {
                    s.cluster = Some(link.status().await);
                }
                Reply::Status(s)
            }
            Command::Help => Reply::Help(HelpReply {
                commands: HELP.iter().map(|h| h.to_string()).collect(),
            }),
            Command::Flip {
                slot,
                force,
                drain_timeout,
            } => {
                let (o, warning) = live(c.flip(slot, force, drain_timeout).await, flip_of)?;
                Reply::Flip(flip_reply(o, warning))
            }
            Command::Rollback { force } => {
                let (o, warning) = live(c.rollback(force).await, flip_of)?;
                Reply::Flip(flip_reply(o, warning))
            }
            Command::Set { slot, field, force } => {
                let (r, warning) = live(c.set(slot, field, force).await, routing_of)?;
                Reply::Set(SetReply {
                    slot,
                    generation: r.generation,
                    status: slot_status(&r, slot),
                    warning,
                })
            }
            Command::Drain {
                slot,
                wait,
                timeout,
            } => {
                let counters = c.load().counters.clone();
                let drained = if wait {
                    c.wait_drained_everywhere(slot, timeout.unwrap_or(DEFAULT_WAIT))
                        .await
                } else {
                    counters.inflight(slot) == 0
                };
                Reply::Drain(DrainReply {
                    slot,
                    inflight: counters.inflight(slot),
                    drained,
                    state: slot_state(&c.load(), slot),
                })
            }
            Command::Health => Reply::Health(health(&c.load())),
            Command::Weights { blue, green } => {
                let (r, warning) = live(c.weights(blue, green).await, routing_of)?;
                Reply::Weights(WeightsReply {
                    weights: Weights { blue, green },
                    generation: r.generation,
                    warning,
                })
            }
            Command::Deploy {
                slot,
                upstreams,
                version,
                timeout,
                progress: _,
            } => {
                let timeout = timeout.unwrap_or(DEFAULT_WAIT);
                let d = deploy::deploy(c, slot, upstreams, version, timeout, &progress);
                Reply::Deploy(d.await?)
            }
            Command::Stats => Reply::Stats(stats(&c.load(), c.metrics())),
            Command::Reload => {
                let take = |a| match a {
                    Applied::Reload(changes) => Some(changes),
                    _ => None,
                };
                let (reloaded, warning) = live(c.reload().await, take)?;
                Reply::Reload(ReloadReply {
                    changed: reloaded.changed,
                    restart_needed: reloaded.restart_needed,
                    warning,
                })
            }
        };
        Ok(reply)
    }
}

/// The admin socket as a Pingora background service.
pub struct AdminService {
    listener: Mutex<Option<UnixListener>>,
    handler: Arc<AdminHandler>,
}

impl AdminService {
    /// Serves `listener` (bound by [`bascule_admin::server::bind`]) with `handler`.
    pub fn new(listener: UnixListener, handler: Arc<AdminHandler>) -> AdminService {
        AdminService {
            listener: Mutex::new(Some(listener)),
            handler,
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(listener) = listener {
            let idle = self.handler.control.config().admin.idle_timeout;
            bascule_admin::server::serve(listener, self.handler.clone(), idle, shutdown).await;
        }
    }
}
