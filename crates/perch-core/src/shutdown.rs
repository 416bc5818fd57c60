//! The shutdown signal every long-running task watches: a `watch` channel of `bool` that flips
//! to `true` once, when the server stops. Only tokio's `sync` channels: no runtime, no I/O.

use tokio::sync::watch;

/// Resolves once `shutdown` says stop (without holding the channel's lock across awaits); a
/// dropped sender counts as stop.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn resolves_on_stop_or_when_the_sender_is_gone_and_not_before() {
        let (tx, mut rx) = watch::channel(false);
        let early = tokio::time::timeout(Duration::from_millis(20), stopped(&mut rx)).await;
        assert!(early.is_err(), "no stop yet");
        tx.send(true).unwrap();
        stopped(&mut rx).await;

        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        stopped(&mut rx).await;
    }
}
