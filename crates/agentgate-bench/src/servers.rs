//! The servers compared with agentgate: two ceilings built into this binary (a bare
//! tokio-tungstenite server on a current-thread runtime with a 4 KiB read buffer,
//! without and with the HS256 check), and the stacks users write instead (Node `ws` +
//! `jsonwebtoken`, FastAPI + uvicorn + PyJWT), installed under `target/bench-peers`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{AUDIENCE, ISSUER, JWT_SECRET, JWT_SECRET_ENV};

/// The ceiling's read buffer.
pub(crate) const CEILING_READ_BUFFER: usize = 4096;

/// A welcome of the same shape and about the same size as agentgate's.
pub(crate) fn welcome(subject: &str) -> String {
    format!(
        "{{\"type\":\"welcome\",\"protocol\":\"agentgate.v1\",\"session_id\":\"s_0123456789abcdef0123456789\",\
         \"resumed\":false,\"principal\":{{\"subject\":{},\"tenant\":null,\"scopes\":[\"agents:run\"],\
         \"via\":\"jwt:bench\"}},\"expires_at\":null,\"heartbeat_ms\":25000}}",
        serde_json::to_string(subject).unwrap_or_else(|_| "\"?\"".into())
    )
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
}

/// Helper mode `--serve-ceiling ADDR_FILE [--ceiling-auth]`: accept, (verify the bearer
/// JWT), send one welcome, answer the client's close. One thread, as the ceiling.
pub(crate) fn serve_ceiling(addr_file: &Path, auth: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        write_addr(addr_file, &listener.local_addr()?.to_string())?;
        let check = if auth {
            let secret = std::env::var(JWT_SECRET_ENV).context("the ceiling with auth needs the bench secret")?;
            let mut v = Validation::new(Algorithm::HS256);
            v.set_issuer(&[ISSUER]);
            v.set_audience(&[AUDIENCE]);
            Some(Arc::new((DecodingKey::from_secret(secret.as_bytes())?, v)))
        } else {
            None
        };
        let config = WebSocketConfig::default().read_buffer_size(CEILING_READ_BUFFER);
        loop {
            let (stream, _) = listener.accept().await?;
            let check = check.clone();
            tokio::spawn(async move {
                let mut subject = String::from("anonymous");
                // The callback's type is tungstenite's.
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    let Some((key, validation)) = check.as_deref() else { return Ok(resp) };
                    let token = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "));
                    match token.map(|t| jsonwebtoken::decode::<Claims>(t, key, validation)) {
                        Some(Ok(data)) => {
                            subject = data.claims.sub;
                            Ok(resp)
                        }
                        _ => {
                            let mut r = ErrorResponse::new(None);
                            *r.status_mut() = StatusCode::UNAUTHORIZED;
                            Err(r)
                        }
                    }
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
                else {
                    return;
                };
                if ws.send(Message::text(welcome(&subject))).await.is_err() {
                    return;
                }
                while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(120), ws.next()).await {}
            });
        }
    })
}

/// Write `text` to `path` atomically (the parent polls it).
pub(crate) fn write_addr(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The Node peer: `ws` + `jsonwebtoken`, verifying on the `upgrade` event.
const NODE_SERVER: &str = r#"'use strict';
// agentgate-bench peer: what a user writes instead of agentgate with Node.
const http = require('http');
const fs = require('fs');
const { WebSocketServer } = require('ws');
const jwt = require('jsonwebtoken');
const [addrFile] = process.argv.slice(2);
const crypto = require('crypto');
// A KeyObject made once: given the secret as a string, jsonwebtoken 9 first tries
// crypto.createPublicKey on it at every verify, which costs OpenSSL 3 about 1.5 ms.
const secret = crypto.createSecretKey(Buffer.from(process.env.AGENTGATE_BENCH_JWT_SECRET));
const opts = { algorithms: ['HS256'], issuer: process.env.BENCH_ISSUER, audience: process.env.BENCH_AUDIENCE };
const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  const h = req.headers['authorization'] || '';
  let claims;
  try {
    if (!h.startsWith('Bearer ')) throw new Error('no bearer');
    claims = jwt.verify(h.slice(7), secret, opts);
  } catch (e) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {});
    ws.send(JSON.stringify({ type: 'welcome', protocol: 'agentgate.v1', session_id: 's_0123456789abcdef0123456789',
      resumed: false, principal: { subject: claims.sub, tenant: null, scopes: ['agents:run'], via: 'jwt:bench' },
      expires_at: claims.exp, heartbeat_ms: 25000 }));
  });
});
server.listen(0, '127.0.0.1', 4096, () => {
  const a = server.address();
  fs.writeFileSync(addrFile + '.tmp', `${a.address}:${a.port}`);
  fs.renameSync(addrFile + '.tmp', addrFile);
});
"#;

/// The Python peer: FastAPI + uvicorn (its default `websockets` implementation, uvloop,
/// httptools) + PyJWT.
const PYTHON_SERVER: &str = r#"# agentgate-bench peer: what a user writes instead of agentgate with Python.
import json, os, socket, sys
import jwt
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

SECRET = os.environ["AGENTGATE_BENCH_JWT_SECRET"]
ISS, AUD = os.environ["BENCH_ISSUER"], os.environ["BENCH_AUDIENCE"]
app = FastAPI()

@app.websocket("/v1/ws")
async def ws(websocket: WebSocket):
    auth = websocket.headers.get("authorization", "")
    try:
        if not auth.startswith("Bearer "):
            raise jwt.InvalidTokenError("no bearer")
        claims = jwt.decode(auth[7:], SECRET, algorithms=["HS256"], issuer=ISS, audience=AUD)
    except jwt.PyJWTError:
        await websocket.close(code=1008)
        return
    await websocket.accept()
    await websocket.send_text(json.dumps({"type": "welcome", "protocol": "agentgate.v1",
        "session_id": "s_0123456789abcdef0123456789", "resumed": False,
        "principal": {"subject": claims["sub"], "tenant": None, "scopes": ["agents:run"], "via": "jwt:bench"},
        "expires_at": claims["exp"], "heartbeat_ms": 25000}))
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass

if __name__ == "__main__":
    addr_file = sys.argv[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    host, port = sock.getsockname()
    with open(addr_file + ".tmp", "w") as f:
        f.write(f"{host}:{port}")
    os.rename(addr_file + ".tmp", addr_file)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])
"#;

/// One peer stack: how to start it, or why it is skipped.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The `--servers` key.
    pub(crate) key: &'static str,
    pub(crate) name: &'static str,
    program: PathBuf,
    script: PathBuf,
}

impl Peer {
    /// The command that starts it, announcing its address in `addr_file`.
    pub(crate) fn command(&self, pinning: &crate::procs::Pinning, addr_file: &Path) -> Command {
        let mut c = pinning.server_cmd(&self.program);
        c.arg(&self.script).arg(addr_file);
        c.env("BENCH_ISSUER", ISSUER).env("BENCH_AUDIENCE", AUDIENCE).env(JWT_SECRET_ENV, JWT_SECRET);
        c
    }
}

fn runtime_present(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("peers: {what} ...");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}\nfix the registry access or pass --no-peers",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Install (once) and describe the peers whose runtime is present under `dir`
/// (`target/bench-peers`). A peer whose runtime is absent is skipped with a printed note;
/// a failed install of a present runtime's packages is an error.
pub(crate) fn prepare_peers(dir: &Path) -> Result<Vec<Peer>> {
    std::fs::create_dir_all(dir)?;
    let mut peers = Vec::new();
    if runtime_present("node", "--version") && runtime_present("npm", "--version") {
        let modules = dir.join("node_modules");
        if !modules.join("ws").is_dir() || !modules.join("jsonwebtoken").is_dir() {
            run(
                Command::new("npm").current_dir(dir).args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--silent",
                    "ws@8",
                    "jsonwebtoken@9",
                ]),
                "npm install ws jsonwebtoken",
            )?;
        }
        let script = dir.join("ws-server.js");
        std::fs::write(&script, NODE_SERVER)?;
        peers.push(Peer { key: "node", name: "Node ws + jsonwebtoken", program: "node".into(), script });
    } else {
        eprintln!("note: Node.js (node and npm) not found: the Node ws peer is skipped");
    }
    if runtime_present("python3", "--version") {
        let venv = dir.join("venv");
        let python = venv.join("bin/python");
        if !python.is_file() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv")?;
        }
        let ok = Command::new(&python)
            .args(["-c", "import fastapi, uvicorn, jwt, websockets, matplotlib"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            run(
                Command::new(&python).args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "fastapi",
                    "uvicorn[standard]",
                    "pyjwt",
                    "websockets",
                    "matplotlib",
                ]),
                "pip install fastapi uvicorn[standard] pyjwt matplotlib",
            )?;
        }
        let script = dir.join("fastapi_server.py");
        std::fs::write(&script, PYTHON_SERVER)?;
        peers.push(Peer { key: "python", name: "FastAPI + uvicorn + PyJWT", program: python, script });
    } else {
        eprintln!("note: python3 not found: the FastAPI peer is skipped (and no plot is drawn)");
    }
    Ok(peers)
}
