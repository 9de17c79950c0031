//! Capture mode (`TESSERA_CAPTURE_DIR`): a connection's client bytes and the
//! bytes its backend sent land in files, unchanged.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mysql_async::prelude::*;
use tessera_net::capture;
use tessera_net::mariadbd::scratch_dir;

/// (sequence id, payload) of every whole packet in `bytes`.
fn packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]) as usize;
        if bytes.len() < 4 + len {
            break;
        }
        out.push((bytes[3], bytes[4..4 + len].to_vec()));
        bytes = &bytes[4 + len..];
    }
    out
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_writes_client_and_backend_bytes() {
    let dir = scratch_dir("tessera-capture");
    // The only test in this binary: setting the variable races with nothing.
    std::env::set_var(capture::ENV, &dir);
    let env = Env::start("").await;
    std::env::remove_var(capture::ENV);

    let mut conn = env.proxy_conn().await;
    let v: Option<String> = conn.query_first("SELECT 'captured-94721'").await.unwrap();
    assert_eq!(v.as_deref(), Some("captured-94721"));

    // Each connection has its own files; ours is the only one with the query.
    let query = b"\x03SELECT 'captured-94721'";
    let client_files = files_with(&dir, "client");
    let ours: Vec<&PathBuf> = client_files
        .iter()
        .filter(|p| {
            let b = std::fs::read(p).unwrap();
            b.windows(query.len()).any(|w| w == query)
        })
        .collect();
    assert_eq!(ours.len(), 1, "files: {client_files:?}");
    let client = std::fs::read(ours[0]).unwrap();
    let pkts = packets(&client);

    // It starts with the handshake response: sequence id 1, CLIENT_PROTOCOL_41,
    // then after 32 bytes of fixed fields the user name.
    let (seq, hs) = &pkts[0];
    assert_eq!(*seq, 1);
    let caps = u32::from_le_bytes([hs[0], hs[1], hs[2], hs[3]]);
    assert_ne!(caps & 0x200, 0, "CLIENT_PROTOCOL_41");
    assert_eq!(&hs[32..32 + USER.len() + 1], format!("{USER}\0").as_bytes());
    // The file is whole packets, nothing more or less.
    let framed: usize = pkts.iter().map(|(_, p)| 4 + p.len()).sum();
    assert_eq!(framed, client.len());
    // The query, as the client framed it: a command, sequence id 0.
    assert!(pkts.contains(&(0, query[..].to_vec())), "{pkts:?}");

    // The backend's answer to it, as the backend sent it.
    let stem = ours[0].file_stem().unwrap().to_owned();
    let backend = ours[0].with_file_name(format!("{}.backend0", stem.to_string_lossy()));
    let answer = std::fs::read(&backend).unwrap();
    let bpkts = packets(&answer);
    let framed: usize = bpkts.iter().map(|(_, p)| 4 + p.len()).sum();
    assert_eq!(framed, answer.len());
    let row = b"\x0ecaptured-94721";
    assert!(
        bpkts.iter().any(|(_, p)| p == row),
        "no text row in {bpkts:?}"
    );

    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}
