//! Client frame parsing: any text must parse or fail with `protocol_error` or
//! `token_missing`, never panic.
#![no_main]

use agentgate_protocol::{ClientMessage, ErrorCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = ClientMessage::parse(text) {
            assert!(matches!(e.code, ErrorCode::ProtocolError | ErrorCode::TokenMissing));
        }
    }
});
