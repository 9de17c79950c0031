//! Arbitrary backend replies: to each kind of command the proxy forwards,
//! to the restore commands, and during the backend login. Nothing may panic.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tessera_core::backend::BackendLogin;
use tessera_core::testing::PRIMARY;
use tessera_core::protocol::{self, FrameReader};
use tessera_core::testing::{attach_and_restore, backend_meta, client_caps, drain, logged_in};

const COMMANDS: &[&[u8]] = &[
    b"\x03SELECT * FROM t",
    b"\x16SELECT ? FROM t",
    b"\x04t\x00",
    b"\x09",
    b"\x1b\x01\x00",
    b"\x02db",
    b"\x1f",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    if selector == 0xff {
        // The login state machine against arbitrary server packets.
        let mut login = BackendLogin::new("app", "pw", client_caps());
        let mut frames = FrameReader::new(1 << 20);
        let mut buf = BytesMut::from(rest);
        while let Ok(Some(p)) = frames.next_packet(&mut buf) {
            if login.handle_packet(&p).is_err() || login.finished().is_some() {
                break;
            }
        }
        return;
    }
    let mut s = logged_in(now, client_caps(), 1 << 16);
    let command = COMMANDS[selector as usize % COMMANDS.len()];
    let mut q = BytesMut::new();
    protocol::write_packet(&mut q, 0, command);
    s.handle_client_data(now, &mut q);
    if drain(&mut s).acquire {
        if selector & 0x80 != 0 {
            // Garbage while restoring the session state.
            s.handle_backend_attached(now, PRIMARY, backend_meta(client_caps()));
            drain(&mut s);
        } else {
            attach_and_restore(&mut s, now, client_caps());
        }
    }
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(29) {
        buf.extend_from_slice(chunk);
        s.handle_backend_data(now, PRIMARY, &mut buf);
        drain(&mut s);
    }
    s.handle_backend_closed(now, PRIMARY, "fuzz");
    drain(&mut s);
});
