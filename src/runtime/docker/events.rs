//! The daemon's event stream: container `die` events, followed forever.

use std::time::Duration;

use tracing::warn;

use super::DockerOptions;

/// Follows the daemon's `die` events forever (reconnecting), sending each container id to
/// `dead`, a bounded channel: the daemon that consumes it decides how the work runs.
pub async fn follow_die_events(
    options: impl Fn() -> DockerOptions,
    dead: tokio::sync::mpsc::Sender<String>,
) {
    use futures_util::StreamExt;
    loop {
        // Asked anew at each connection: the plugin may have learned the daemon since.
        let (socket, _, host_root) = match options().resolve() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "no daemon socket for events; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let socket = super::on_host(&host_root, &socket);
        let client = match super::engine_client(&socket, Duration::from_secs(120)) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot reach dockerd for events; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let filters = std::collections::HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["die".to_string()]),
        ]);
        let events_options = bollard::query_parameters::EventsOptionsBuilder::new()
            .filters(&filters)
            .build();
        let mut events = client.events(Some(events_options));
        while let Some(event) = events.next().await {
            // A malformed event or a vanished container is logged and skipped.
            let Ok(event) = event else { break };
            let Some(id) = event.actor.and_then(|a| a.id) else {
                continue;
            };
            // Bounded: while the consumer is busy, the stream waits.
            if dead.send(id).await.is_err() {
                return;
            }
        }
        warn!("event stream ended; reconnecting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
