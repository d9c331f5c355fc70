//! `agentgate serve`.

use crate::cli::ServeArgs;

use super::{EXIT_FAILURE, load_config, process_env};

pub(crate) fn run(args: ServeArgs) -> u8 {
    let env = process_env();
    let config = match load_config(args.config.as_deref(), &env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // One CPU allowed (a container limit, `taskset`): a current-thread runtime does the
    // same work without the multi-thread scheduler's bookkeeping; with more, one
    // worker per CPU.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentgate: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    // The whole server runs as a task on the worker threads, not on this thread's
    // `block_on`: the accept loop then shares a worker with the connections it spawns
    // instead of waking another thread for each one.
    let server = async move {
        let listener = match agentgate_app::server::bind(&config.server.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "agentgate: cannot listen on {} (server.listen): {e}; pick a free port or use port 0",
                    config.server.listen
                );
                return EXIT_FAILURE;
            }
        };
        if let Some(path) = &config.dev_key {
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            tracing::info!(
                key_file = %shown.display(),
                "development mode: verifying HS256 tokens of issuer \"local\" with the key in this file (its value is never printed)"
            );
            tracing::info!("mint a token for it with: agentgate token mint --sub alice");
        }
        match agentgate_app::serve(listener, config, agentgate_app::shutdown::signal()).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("agentgate: {e}");
                EXIT_FAILURE
            }
        }
    };
    runtime.block_on(async move {
        match tokio::spawn(server).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("agentgate: the server task failed: {e}");
                EXIT_FAILURE
            }
        }
    })
}
