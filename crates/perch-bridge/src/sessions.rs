//! The live map device → connection. A new CONNECT for a device closes the older connection;
//! revocations, config pushes and commands reach connections through here.
//!
//! Each connection owns an `mpsc` control channel; this map only holds senders. In a cluster this
//! map is per node and control messages will travel over NATS subjects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use perch_core::model::{Device, DeviceConfig, Registry};
use perch_core::{ErrorCode, RegistryName, Rejection};
use perch_registry::events::{CommandSink, RegistryEvent};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Control messages a connection obeys.
#[derive(Debug)]
pub(crate) enum Control {
    /// End device `num_id`'s session (the whole connection for the connecting device, a detach
    /// for a device attached through a gateway), recording this status on it.
    Kick {
        num_id: u64,
        code: ErrorCode,
        message: String,
    },
    /// The device changed through the admin API: re-check blocked and credentials (of the
    /// connection's own device, or of an attachment through a gateway).
    DeviceChanged(Box<Device>),
    /// Device `num_id` was unbound from a gateway: re-check its attachment, if any.
    AttachmentChanged { num_id: u64 },
    /// The registry changed: new routes, maybe MQTT disabled.
    RegistryChanged(Box<Registry>),
    /// A new config version to push if subscribed.
    Config { num_id: u64, config: DeviceConfig },
    /// A command to deliver; the reply says whether it was.
    Command {
        num_id: u64,
        subfolder: String,
        data: Bytes,
        reply: oneshot::Sender<Result<(), Rejection>>,
    },
}

/// Capacity of a connection's control channel.
pub(crate) const CONTROL_CHANNEL_CAPACITY: usize = 64;

#[derive(Debug)]
struct Entry {
    conn_id: u64,
    registry: RegistryName,
    tx: mpsc::Sender<Control>,
}

/// Live MQTT sessions by device numeric id.
#[derive(Debug, Clone)]
pub(crate) struct Sessions {
    map: Arc<Mutex<HashMap<u64, Entry>>>,
    next_conn: Arc<AtomicU64>,
    /// `sendCommandToDevice` answers within this, whatever the connection does.
    command_ack_timeout: Duration,
}

/// Text IoT Core recorded on the connection a newer one replaced (SPEC.md §4.3).
const REPLACED: &str = "SERVER: The connection was closed because there is another active connection with the same device ID.";

impl Sessions {
    pub(crate) fn new(command_ack_timeout: Duration) -> Sessions {
        Sessions {
            map: Arc::default(),
            next_conn: Arc::default(),
            command_ack_timeout,
        }
    }

    /// Registers a connection for a device, closing any older one; returns this connection's id.
    pub(crate) fn register(
        &self,
        num_id: u64,
        registry: RegistryName,
        tx: mpsc::Sender<Control>,
    ) -> u64 {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let old = self.map.lock().ok().and_then(|mut m| {
            m.insert(
                num_id,
                Entry {
                    conn_id,
                    registry,
                    tx,
                },
            )
        });
        if let Some(old) = old {
            deliver(
                old.tx,
                Control::Kick {
                    num_id,
                    code: ErrorCode::AlreadyExists,
                    message: REPLACED.into(),
                },
            );
        }
        conn_id
    }

    /// Forgets a connection, unless a newer one already took its place.
    pub(crate) fn unregister(&self, num_id: u64, conn_id: u64) {
        if let Ok(mut m) = self.map.lock()
            && m.get(&num_id).is_some_and(|e| e.conn_id == conn_id)
        {
            m.remove(&num_id);
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn sender(&self, num_id: u64) -> Option<mpsc::Sender<Control>> {
        self.map.lock().ok()?.get(&num_id).map(|e| e.tx.clone())
    }

    fn send(&self, num_id: u64, control: Control) {
        if let Some(tx) = self.sender(num_id) {
            deliver(tx, control);
        }
    }

    fn in_registry(&self, registry: &RegistryName) -> Vec<(u64, mpsc::Sender<Control>)> {
        self.map
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| &e.registry == registry)
                    .map(|(k, e)| (*k, e.tx.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn all(&self) -> Vec<(u64, mpsc::Sender<Control>)> {
        self.map
            .lock()
            .map(|m| m.iter().map(|(k, e)| (*k, e.tx.clone())).collect())
            .unwrap_or_default()
    }

    /// Applies registry events to live connections until the channel closes.
    pub(crate) async fn follow(self, mut events: broadcast::Receiver<RegistryEvent>) {
        let kick = |num_id, code, message: &str| Control::Kick {
            num_id,
            code,
            message: message.to_owned(),
        };
        loop {
            match events.recv().await {
                Ok(RegistryEvent::DeviceChanged { device, .. }) => {
                    let num_id = device.num_id;
                    self.send(num_id, Control::DeviceChanged(device));
                }
                Ok(RegistryEvent::DeviceDeleted { num_id, .. }) => self.send(
                    num_id,
                    kick(
                        num_id,
                        ErrorCode::NotFound,
                        "SERVER: The device was deleted.",
                    ),
                ),
                Ok(RegistryEvent::DeviceUnbound { device_num_id, .. }) => self.send(
                    device_num_id,
                    Control::AttachmentChanged {
                        num_id: device_num_id,
                    },
                ),
                Ok(RegistryEvent::ConfigChanged { num_id, config, .. }) => {
                    self.send(num_id, Control::Config { num_id, config })
                }
                Ok(RegistryEvent::RegistryChanged { registry }) => {
                    for (_, tx) in self.in_registry(&registry.name()) {
                        deliver(tx, Control::RegistryChanged(registry.clone()));
                    }
                }
                Ok(RegistryEvent::RegistryDeleted { name }) => {
                    for (num_id, tx) in self.in_registry(&name) {
                        deliver(
                            tx,
                            kick(
                                num_id,
                                ErrorCode::NotFound,
                                "SERVER: The registry was deleted.",
                            ),
                        );
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Events were lost: a revocation may be among them, so every connection
                    // must reconnect and be authenticated afresh.
                    tracing::warn!(
                        missed,
                        "registry events lagged; closing every MQTT connection so devices re-authenticate"
                    );
                    for (num_id, tx) in self.all() {
                        deliver(
                            tx,
                            kick(
                                num_id,
                                ErrorCode::Unavailable,
                                "SERVER: The connection was reset.",
                            ),
                        );
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Sends a control message without blocking the caller; a full channel waits in a task (a
/// revocation must not be dropped).
fn deliver(tx: mpsc::Sender<Control>, control: Control) {
    match tx.try_send(control) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(control)) => {
            tokio::spawn(async move {
                let _ = tx.send(control).await;
            });
        }
    }
}

/// The answer to a command the device did not take (QoS 0: write, QoS 1: PUBACK) in time.
pub(crate) fn command_deadline_exceeded(timeout: Duration) -> Rejection {
    Rejection::new(
        ErrorCode::DeadlineExceeded,
        format!(
            "the device did not acknowledge the command within {} s",
            timeout.as_secs_f64()
        ),
    )
}

#[async_trait::async_trait]
impl CommandSink for Sessions {
    async fn send_command(
        &self,
        _registry: &RegistryName,
        device: &Device,
        data: Vec<u8>,
        subfolder: String,
    ) -> Result<(), Rejection> {
        let not_subscribed = || {
            Rejection::failed_precondition(format!(
                "Device `{}` is not connected or is not subscribed to the commands topic.",
                device.id
            ))
        };
        let tx = self.sender(device.num_id).ok_or_else(not_subscribed)?;
        let (reply, answer) = oneshot::channel();
        let delivered = async {
            tx.send(Control::Command {
                num_id: device.num_id,
                subfolder,
                data: Bytes::from(data),
                reply,
            })
            .await
            .map_err(|_| not_subscribed())?;
            answer.await.map_err(|_| not_subscribed())?
        };
        // The session answers by this deadline itself; this one holds even if it cannot.
        tokio::time::timeout(self.command_ack_timeout, delivered)
            .await
            .unwrap_or_else(|_| Err(command_deadline_exceeded(self.command_ack_timeout)))
    }
}
