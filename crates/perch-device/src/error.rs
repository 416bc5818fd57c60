//! The one error type of `perch-device`.

/// What went wrong talking to the bridge or preparing to.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The private key file cannot sign tokens of the configured algorithm.
    #[error("invalid private key: {0}")]
    InvalidPrivateKey(String),
    /// The CA file holds no usable certificate.
    #[error("invalid CA file: {0}")]
    InvalidCa(String),
    /// A claim could not be built (a clock or lifetime out of range).
    #[error("cannot build the JWT: {0}")]
    InvalidClaim(String),
    /// The connection is down; the publish was not sent, or its PUBACK can no longer arrive.
    /// Retry it once connected again.
    #[error("not connected to the MQTT bridge")]
    NotConnected,
    /// Too many publishes await their PUBACK; wait for some first.
    #[error("too many publishes awaiting their PUBACK")]
    Busy,
    /// The client was shut down.
    #[error("the device client is closed")]
    Closed,
    /// The PUBACK did not come in time; the connection is dropped and re-established.
    #[error("no PUBACK within {0:?}")]
    PubAckTimeout(std::time::Duration),
    /// A one-shot connection ([`crate::bootstrap::ask`]) was refused or lost; the text says why.
    #[error("{0}")]
    Connection(String),
    /// A one-shot connection got no answer in time.
    #[error("no answer within {0:?}")]
    NoAnswer(std::time::Duration),
}

/// `Result` with [`DeviceError`].
pub type Result<T> = std::result::Result<T, DeviceError>;
