//! The `--url`: a `ws://` or `wss://` URL naming an MCP server as `.../v1/mcp/{server}`,
//! without a credential in its query.

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Where to connect.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) url: String,
    /// `host:port/path`: what diagnostics show (never user info or a query).
    pub(super) shown: String,
    /// The MCP server's name, the last segment of `/v1/mcp/{server}`.
    pub(super) server: String,
    /// `--ca-file`: the only trust anchors for a `wss://` URL.
    pub(super) ca_file: Option<std::path::PathBuf>,
}

impl Target {
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let req = url
            .into_client_request()
            .map_err(|_| "--url must be a WebSocket URL like ws://127.0.0.1:8079/v1/mcp/everything".to_owned())?;
        let uri = req.uri();
        if let Some(q) = uri.query()
            && q.split('&').any(|kv| {
                let k = kv.split('=').next().unwrap_or("");
                k == "access_token" || k == "ticket"
            })
        {
            return Err("--url carries a credential in its query; a token is never a command-line value \
                 (and /v1/mcp does not read access_token): use --token-env, --token-file or AGENTGATE_TOKEN"
                .to_owned());
        }
        let path = uri.path();
        let server = path
            .rsplit_once("/v1/mcp/")
            .map(|(_, name)| name)
            .filter(|name| !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| {
                format!(
                    "--url must name an MCP server as .../v1/mcp/{{server}} (e.g. ws://127.0.0.1:8079/v1/mcp/everything); \
                     got the path {path:?}"
                )
            })?
            .to_owned();
        let host = uri.host().unwrap_or("?");
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
        Ok(Self { url: url.to_owned(), shown: format!("{host}:{port}{path}"), server, ca_file: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_name_an_mcp_server_and_carry_no_token() {
        let t = Target::parse("ws://127.0.0.1:9/v1/mcp/everything").unwrap();
        assert_eq!((t.server.as_str(), t.shown.as_str()), ("everything", "127.0.0.1:9/v1/mcp/everything"));
        let t = Target::parse("wss://gw.example/v1/mcp/fs").unwrap();
        assert_eq!(t.shown, "gw.example:443/v1/mcp/fs");
        let t = Target::parse("ws://user:pw@gw.example:80/prefix/v1/mcp/fs").unwrap();
        assert_eq!(t.server, "fs");
        assert!(!t.shown.contains("pw"));
        assert!(Target::parse("ws://127.0.0.1:9/v1/ws").is_err());
        assert!(Target::parse("ws://127.0.0.1:9/v1/mcp/").is_err());
        assert!(Target::parse("http ://x").is_err());
        let e = Target::parse("ws://127.0.0.1:9/v1/mcp/x?access_token=abc").unwrap_err();
        assert!(!e.contains("abc"), "{e}");
    }
}
