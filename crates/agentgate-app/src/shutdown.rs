//! Shutdown signalling: one `watch` flag turned true once, and the OS signals that
//! turn it.

use tokio::sync::watch;

/// Wait until the flag is true. If the sender is gone without ever setting it, wait
/// forever: a dropped sender is not a shutdown.
pub async fn wait(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives while the
/// gateway is still starting (after it announced its address) is not lost, and never
/// ends the process with the default action.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let term = async {
                match term {
                    Some(mut t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int {
                    Some(mut i) => {
                        i.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
