//! Arbitrary client bytes in every phase of a session: handshake, command
//! phase, and while a result set streams. Nothing may panic; the session
//! may only answer with framed packets, and never buffers beyond
//! max_allowed_packet.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tessera_core::protocol::{self, StatusFlags};
use tessera_core::testing::PRIMARY;
use tessera_core::testing::{attach_and_restore, client_caps, context, drain, logged_in};
use tessera_core::Session;

const MAX_PACKET: usize = 1 << 16;

fn feed_chunks(s: &mut Session, now: Instant, data: &[u8]) {
    let mut buf = BytesMut::new();
    for chunk in data.chunks(37) {
        buf.extend_from_slice(chunk);
        s.handle_client_data(now, &mut buf);
        let d = drain(s);
        if d.acquire {
            attach_and_restore(s, now, client_caps());
        }
        check_framed(&d.to_client);
        if s.is_closed() {
            return;
        }
    }
}

/// Every byte the session sends the client is a sequence of whole packets.
fn check_framed(mut out: &[u8]) {
    while !out.is_empty() {
        assert!(out.len() >= 4, "truncated header");
        let len = u32::from_le_bytes([out[0], out[1], out[2], 0]) as usize;
        assert!(out.len() >= 4 + len, "truncated packet");
        out = &out[4 + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&phase, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    match phase % 3 {
        0 => {
            let mut s = Session::new(
                context(MAX_PACKET),
                1,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                [3; 20],
                now,
            );
            drain(&mut s);
            feed_chunks(&mut s, now, rest);
        }
        1 => {
            let mut s = logged_in(now, client_caps(), MAX_PACKET);
            feed_chunks(&mut s, now, rest);
        }
        _ => {
            // A query whose result is half-way through when the client sends more.
            let mut s = logged_in(now, client_caps(), MAX_PACKET);
            let mut q = BytesMut::new();
            protocol::write_packet(&mut q, 0, b"\x03SELECT 1");
            s.handle_client_data(now, &mut q);
            drain(&mut s);
            attach_and_restore(&mut s, now, client_caps());
            let col = mysql_common::packets::Column::new(
                mysql_common::constants::ColumnType::MYSQL_TYPE_LONG,
            );
            let wire = protocol::encode_text_result(
                &[col],
                &[vec![Some(&b"1"[..])]],
                true,
                StatusFlags::empty(),
            );
            let mut half = BytesMut::from(&wire[..wire.len() / 2]);
            s.handle_backend_data(now, PRIMARY, &mut half);
            // Rows stream as they arrive, so only the whole output is framed.
            let mut out = drain(&mut s).to_client;
            feed_chunks(&mut s, now, rest);
            let mut tail = BytesMut::from(&wire[wire.len() / 2..]);
            s.handle_backend_data(now, PRIMARY, &mut tail);
            out.extend(drain(&mut s).to_client);
            check_framed(&out);
        }
    }
});
