//! Arbitrary COM_STMT_EXECUTE (and SEND_LONG_DATA, RESET, FETCH, CLOSE)
//! payloads against a statement prepared with a generated number of
//! parameters, on the backend that prepared it and after a reconnect that
//! forces a re-prepare.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tessera_core::protocol::{self, StatusFlags};
use tessera_core::testing::PRIMARY;
use tessera_core::testing::{attach_and_restore, client_caps, drain, logged_in};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let params = data[0] % 12;
    let reconnect = data[1] & 1 == 1;
    let now = Instant::now();
    let mut s = logged_in(now, client_caps(), 1 << 16);
    let mut q = BytesMut::new();
    protocol::write_packet(&mut q, 0, b"\x16SELECT ?");
    s.handle_client_data(now, &mut q);
    drain(&mut s);
    attach_and_restore(&mut s, now, client_caps());
    // STMT_OK with `params` parameters and no columns (DEPRECATE_EOF: no EOFs).
    let mut wire = BytesMut::new();
    let mut ok = vec![0u8];
    ok.extend_from_slice(&9u32.to_le_bytes());
    ok.extend_from_slice(&0u16.to_le_bytes());
    ok.extend_from_slice(&(params as u16).to_le_bytes());
    ok.extend_from_slice(&[0, 0, 0]);
    let mut seq = protocol::write_packet(&mut wire, 1, &ok);
    for _ in 0..params {
        seq = protocol::write_packet(
            &mut wire,
            seq,
            b"\x03def\x00\x00\x00\x01?\x00\x0c\x3f\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00",
        );
    }
    s.handle_backend_data(now, PRIMARY, &mut wire);
    let out = drain(&mut s).to_client;
    let Some(client_id) = out
        .get(5..9)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return;
    };
    if reconnect {
        s.handle_backend_closed(now, PRIMARY, "fuzz");
        drain(&mut s);
    }
    for chunk in data[2..].split(|&b| b == 0xa5) {
        let Some((&kind, body)) = chunk.split_first() else {
            continue;
        };
        let command = [0x17u8, 0x18, 0x1a, 0x1c, 0x19][kind as usize % 5];
        let mut payload = vec![command];
        payload.extend_from_slice(&client_id.to_le_bytes());
        payload.extend_from_slice(body);
        let mut q = BytesMut::new();
        protocol::write_packet(&mut q, 0, &payload);
        s.handle_client_data(now, &mut q);
        let d = drain(&mut s);
        if d.acquire {
            attach_and_restore(&mut s, now, client_caps());
        }
        // Answer whatever reached the backend with OK so the next command runs.
        let mut ok = BytesMut::new();
        protocol::write_packet(
            &mut ok,
            1,
            &protocol::ok_payload(0, 0, 0, StatusFlags::empty(), 0),
        );
        s.handle_backend_data(now, PRIMARY, &mut ok);
        drain(&mut s);
        if s.is_closed() {
            return;
        }
    }
});
