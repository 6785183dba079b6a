//! `segvault repair`: lost, corrupt and refused shares over directories and storage nodes,
//! a file below k, dry runs, lists, JSON, a repair killed midway, two at once, and a
//! property test that rebuilt shares are byte for byte the uploader's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::grid::TestGrid;
use common::http;
use common::process;
use common::vault::Segvault;
use common::{Fixture, files_under, random_bytes};
use proptest::prelude::*;
use segvault::core::layout::RECORDS_OFFSET;
use segvault::repair::{Outcome, RepairOptions, repair};

/// Every share file of the file `cap` names in `dirs`, by share number (a share may have
/// several copies).
fn copies_in(dirs: &[PathBuf], si: &str) -> BTreeMap<u8, Vec<(PathBuf, Vec<u8>)>> {
    let mut copies: BTreeMap<u8, Vec<(PathBuf, Vec<u8>)>> = BTreeMap::new();
    for dir in dirs {
        let file_dir = dir.join("shares").join(&si[..2]).join(si);
        for path in files_under(&file_dir) {
            let share: u8 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            copies.entry(share).or_default().push((path, bytes));
        }
    }
    copies
}

/// The embedded grid's share directories.
fn embedded_dirs(vault: &Segvault) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files_under(&vault.data())
        .into_iter()
        .filter_map(|f| {
            // <server>/tmp/spool.lock marks each share directory.
            (f.file_name()? == "spool.lock").then(|| f.parent()?.parent().map(Path::to_path_buf))?
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    assert!(dirs.len() >= 10, "the embedded grid: {dirs:?}");
    dirs
}

fn info_field(vault: &Segvault, cap: &str, field: &str) -> String {
    let info = String::from_utf8(vault.ok(&["info", cap], None)).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .trim()
        .to_owned()
}

/// One copy of each share, as the uploader wrote it.
fn originals(dirs: &[PathBuf], si: &str) -> BTreeMap<u8, Vec<u8>> {
    copies_in(dirs, si)
        .into_iter()
        .map(|(share, mut copies)| {
            assert_eq!(copies.len(), 1, "share {share} stored once by put");
            (share, copies.remove(0).1)
        })
        .collect()
}

/// Every copy of every share is the uploader's, and all `n` are there.
fn assert_all_original(dirs: &[PathBuf], si: &str, original: &BTreeMap<u8, Vec<u8>>) {
    let now = copies_in(dirs, si);
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>(),
        "every share is present"
    );
    for (share, copies) in &now {
        for (path, bytes) in copies {
            assert!(
                bytes == &original[share],
                "{} is not the uploader's share {share}",
                path.display()
            );
        }
    }
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at % bytes.len();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// Paths and sizes of every file under `dir`: what "nothing written" compares.
fn tree_state(dir: &Path) -> Vec<(PathBuf, u64)> {
    files_under(dir)
        .into_iter()
        .map(|f| {
            let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            (f, len)
        })
        .collect()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn lost_shares_are_rebuilt_from_the_verify_cap_and_the_file_survives_losing_the_rest() {
    let vault = Segvault::new();
    // Segments of 64 KiB and a tail that ends mid-segment.
    let plaintext = random_bytes(1_300_001, 41);
    let cap = vault.put_bytes(&plaintext, &["--segment-size", "64KiB"]);
    let si = info_field(&vault, &cap, "storage index:");
    let verify_cap = info_field(&vault, &cap, "verify cap:");
    let dirs = embedded_dirs(&vault);
    let original = originals(&dirs, &si);
    assert_eq!(original.len(), 10);

    let lost: Vec<PathBuf> = vault.share_files(&cap).into_iter().take(4).collect();
    for share in &lost {
        std::fs::remove_file(share).unwrap();
    }
    let output = vault.run(&["repair", &verify_cap], None);
    let report = stdout(&output);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.starts_with("repaired"), "{report}");
    assert!(report.contains("all 10 shares good"), "{report}");
    assert!(
        report.contains(&si),
        "names the file by storage index: {report}"
    );
    assert!(
        !report.contains(&verify_cap),
        "never prints the cap: {report}"
    );
    assert_all_original(&dirs, &si, &original);
    // Each share on a server of its own, as put placed them.
    assert_eq!(vault.dirs_holding(&cap).len(), 10);
    assert!(vault.run(&["verify", &cap], None).status.success());
    // A second repair has nothing to do.
    let again = vault.run(&["repair", &cap], None);
    assert!(again.status.success());
    assert!(stdout(&again).starts_with("healthy"), "{}", stdout(&again));

    // Seven others gone, three of them rebuilt ones among the survivors: still exact.
    let rebuilt: BTreeSet<PathBuf> = lost.iter().cloned().collect();
    let mut keep: Vec<PathBuf> = vault
        .share_files(&cap)
        .into_iter()
        .filter(|f| rebuilt.contains(f))
        .take(2)
        .collect();
    keep.extend(
        vault
            .share_files(&cap)
            .into_iter()
            .filter(|f| !rebuilt.contains(f))
            .take(1),
    );
    for share in vault.share_files(&cap) {
        if !keep.contains(&share) {
            std::fs::remove_file(share).unwrap();
        }
    }
    assert_eq!(vault.share_files(&cap).len(), 3);
    let output = vault.get(&cap, None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == plaintext, "exact after the repair");
    for (range, want) in [
        ("0-0", &plaintext[..1]),
        ("-1", &plaintext[plaintext.len() - 1..]),
    ] {
        assert_eq!(vault.get(&cap, Some(range)).stdout, want);
    }
}

#[test]
fn corrupt_copies_are_replaced_and_a_refusing_server_is_passed_over() {
    let vault = Segvault::new();
    let plaintext = random_bytes(700_000, 42);
    let cap = vault.put_bytes(&plaintext, &["--segment-size", "32KiB"]);
    let si = info_field(&vault, &cap, "storage index:");
    let dirs = embedded_dirs(&vault);
    let original = originals(&dirs, &si);
    let shares = vault.share_files(&cap);
    // Flips in a block, in a hash tree near the end, and in the header.
    flip(&shares[0], 400_000);
    flip(&shares[1], usize::MAX / 3);
    flip(&shares[2], 10);
    let output = vault.run(&["repair", &cap], None);
    let report = stdout(&output);
    assert!(output.status.success(), "{report}");
    assert!(report.starts_with("repaired"), "{report}");
    assert_eq!(
        report.matches("replacing its corrupt copy").count(),
        3,
        "{report}"
    );
    assert_all_original(&dirs, &si, &original);
    assert!(vault.run(&["verify", &cap], None).status.success());

    // Two shares lost, and the server first in line for one of them refuses every write:
    // its share directory is a file.
    let shares = vault.share_files(&cap);
    let refusing = shares[3].ancestors().nth(2).unwrap().to_path_buf();
    std::fs::remove_file(&shares[3]).unwrap();
    std::fs::remove_file(&shares[4]).unwrap();
    std::fs::remove_dir_all(&refusing).unwrap();
    std::fs::write(&refusing, b"not a directory").unwrap();
    let output = vault.run(&["repair", &cap], None);
    let report = stdout(&output);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("all 10 shares good"), "{report}");
    let refusing_server = refusing
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .display()
        .to_string();
    assert!(
        !report.contains(&format!("on {refusing_server}")),
        "nothing is placed on the refusing server: {report}"
    );
    let dirs: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|d| !refusing.starts_with(d))
        .collect();
    assert_all_original(&dirs, &si, &original);
    assert!(vault.get(&cap, None).stdout == plaintext);
}

#[test]
fn below_k_nothing_is_written_and_the_exit_says_why() {
    let vault = Segvault::new();
    let cap = vault.put_bytes(&random_bytes(300_000, 43), &[]);
    let shares = vault.share_files(&cap);
    for share in &shares[..8] {
        std::fs::remove_file(share).unwrap();
    }
    let before = tree_state(&vault.data());
    let output = vault.run(&["repair", &cap], None);
    let report = stdout(&output);
    assert!(!output.status.success(), "{report}");
    assert!(report.starts_with("UNRECOVERABLE"), "{report}");
    assert!(report.contains("fewer than k = 3 good shares"), "{report}");
    assert!(report.contains("nothing written"), "{report}");
    assert_eq!(tree_state(&vault.data()), before, "nothing written");
}

#[test]
fn a_dry_run_says_what_it_would_do_and_writes_nothing() {
    let vault = Segvault::new();
    let cap = vault.put_bytes(&random_bytes(300_000, 44), &[]);
    let shares = vault.share_files(&cap);
    std::fs::remove_file(&shares[5]).unwrap();
    flip(&shares[6], 1000);
    let before = tree_state(&vault.data());
    let output = vault.run(&["repair", "--dry-run", &cap], None);
    let report = stdout(&output);
    assert!(!output.status.success(), "still unhealthy: {report}");
    assert!(report.contains("would rebuild"), "{report}");
    assert!(report.contains("nothing written (dry run)"), "{report}");
    assert!(report.contains("missing"), "{report}");
    assert!(report.contains("corrupt"), "{report}");
    assert_eq!(tree_state(&vault.data()), before, "nothing written");

    let output = vault.run(&["repair", "--json", &cap], None);
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(json["outcome"], "repaired");
    assert_eq!(json["rebuilt"].as_array().unwrap().len(), 2);
    assert_eq!(json["missing"].as_array().unwrap().len(), 1);
    assert!(json["bytes_written"].as_u64().unwrap() > 0);
    assert!(json["bytes_read"].as_u64().unwrap() > 0);
}

#[test]
fn a_list_of_caps_is_repaired_a_line_per_file_with_totals() {
    let vault = Segvault::new();
    let healthy = vault.put_bytes(&random_bytes(200_000, 45), &[]);
    let damaged = vault.put_bytes(&random_bytes(200_000, 46), &[]);
    let lost = vault.put_bytes(&random_bytes(200_000, 47), &[]);
    std::fs::remove_file(&vault.share_files(&damaged)[0]).unwrap();
    for share in &vault.share_files(&lost)[2..] {
        std::fs::remove_file(share).unwrap();
    }
    let list = vault.root.path().join("caps.txt");
    std::fs::write(
        &list,
        format!("# films\nholiday.mp4 {healthy}\n{damaged}\nthe lost one {lost}\n"),
    )
    .unwrap();
    let output = vault.run(
        &["repair", "--caps", list.to_str().unwrap(), "--jobs", "3"],
        None,
    );
    let report = stdout(&output);
    assert!(!output.status.success(), "one file is lost: {report}");
    let line = |start: &str| {
        report
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} line in {report}"))
            .to_owned()
    };
    assert!(line("healthy").contains("holiday.mp4 (line 2,"), "{report}");
    assert!(line("repaired").contains("(line 3)"), "{report}");
    assert!(
        line("UNRECOVERABLE").contains("the lost one (line 4,"),
        "{report}"
    );
    let totals = report.lines().last().unwrap();
    assert!(
        totals.starts_with("3 files: 1 healthy, 1 repaired, 0 happy, 0 unhealthy, 1 unrecoverable"),
        "{totals}"
    );
    for cap in [&healthy, &damaged, &lost] {
        assert!(!report.contains(cap.as_str()), "caps are never printed");
    }
    assert!(vault.run(&["verify", &damaged], None).status.success());

    // The same list from stdin, as JSON: the lost file still fails, the others are healthy.
    let text = std::fs::read(&list).unwrap();
    let output = vault.run(&["repair", "--caps", "-", "--json"], Some(&text));
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let by_line: BTreeMap<u64, &serde_json::Value> = lines
        .iter()
        .map(|v| (v["line"].as_u64().unwrap(), v))
        .collect();
    assert_eq!(by_line[&2]["outcome"], "healthy");
    assert_eq!(by_line[&2]["name"], "holiday.mp4");
    assert_eq!(by_line[&3]["outcome"], "healthy");
    assert_eq!(by_line[&4]["outcome"], "unrecoverable");
}

#[test]
fn a_repair_killed_midway_leaves_the_file_readable_and_the_next_one_finishes() {
    let vault = Segvault::new();
    let plaintext = random_bytes(24 << 20, 48);
    let cap = vault.put_bytes(&plaintext, &[]);
    let si = info_field(&vault, &cap, "storage index:");
    let dirs = embedded_dirs(&vault);
    let original = originals(&dirs, &si);
    for share in vault.share_files(&cap).iter().take(4) {
        std::fs::remove_file(share).unwrap();
    }
    let spools = || {
        files_under(&vault.data())
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "part"))
            .count()
    };
    let mut child = vault
        .command()
        .args(["repair", &cap])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once its spools exist: partway through the check.
    process::wait_for("repair spools", std::time::Duration::from_secs(60), || {
        spools() > 0
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Never a partial share where a reader can see it.
    for (share, copies) in copies_in(&dirs, &si) {
        for (path, bytes) in copies {
            assert!(
                bytes == original[&share],
                "{} is whole or absent",
                path.display()
            );
        }
    }
    assert!(vault.get(&cap, None).stdout == plaintext);

    let output = vault.run(&["repair", &cap], None);
    assert!(output.status.success(), "{}", stdout(&output));
    assert_all_original(&dirs, &si, &original);
    assert_eq!(
        spools(),
        0,
        "the dead repair's spools are swept, the second's removed"
    );
}

#[test]
fn two_repairs_racing_on_one_file_both_end_healthy() {
    let vault = Segvault::new();
    let plaintext = random_bytes(3 << 20, 49);
    let cap = vault.put_bytes(&plaintext, &["--segment-size", "64KiB"]);
    let si = info_field(&vault, &cap, "storage index:");
    let dirs = embedded_dirs(&vault);
    let original = originals(&dirs, &si);
    let shares = vault.share_files(&cap);
    for share in &shares[..3] {
        std::fs::remove_file(share).unwrap();
    }
    flip(&shares[3], 5000);
    let start = || {
        vault
            .command()
            .args(["repair", &cap])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    for child in [a, b] {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}{}",
            stdout(&output),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_all_original(&dirs, &si, &original);
    let copies = copies_in(&dirs, &si);
    // A repairer that listed the file while the other was storing may put a share on a
    // second server: an extra copy of the same verified bytes, never a different one.
    assert!(
        copies.values().all(|c| c.len() <= 2),
        "a share stored at most once by each repairer"
    );
    assert!(vault.run(&["verify", &cap], None).status.success());
    assert!(vault.get(&cap, None).stdout == plaintext);
}

#[test]
fn over_storage_nodes_lost_and_corrupt_shares_are_rebuilt_elsewhere() {
    let grid = TestGrid::new();
    let plaintext = random_bytes(900_000, 50);
    let cap = grid.put(&plaintext);
    for node in &grid.nodes[..3] {
        for share in node.share_files() {
            std::fs::remove_file(share).unwrap();
        }
    }
    // Nodes never overwrite a share: the corrupt copy's share goes to another node.
    let corrupt = grid.nodes[3].share_files();
    flip(&corrupt[0], 200_000);
    let verify_cap = {
        let info = process::ok(grid.segvault().args(["info", &cap]));
        String::from_utf8(info)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("verify cap:"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let output = process::run(grid.segvault().args(["repair", &verify_cap]));
    let report = stdout(&output);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.starts_with("repaired"), "{report}");
    assert!(report.contains("corrupt "), "{report}");
    assert!(
        !report.contains("replacing"),
        "nodes do not overwrite: {report}"
    );
    // The nodes holding no share of it took the lost ones.
    for node in &grid.nodes[..3] {
        assert_eq!(node.share_files().len(), 1, "{report}");
    }
    // Down to three shares, none of them the corrupt copy: exact.
    std::fs::remove_file(&corrupt[0]).unwrap();
    let mut left: Vec<PathBuf> = grid.nodes.iter().flat_map(|n| n.share_files()).collect();
    left.sort();
    for share in &left[3..] {
        std::fs::remove_file(share).unwrap();
    }
    let got = process::ok(grid.segvault().args(["get", &cap]));
    assert!(got == plaintext, "exact from three shares, some rebuilt");
}

/// Builds a runtime for the property test's async body.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// For random geometries and random lost and corrupt share sets leaving at least k
    /// good, repair stores shares byte for byte the uploader's.
    #[test]
    fn repaired_shares_are_the_uploaders_byte_for_byte(
        k in 1u16..6,
        extra in 0u16..6,
        segment_kib in 1u64..9,
        size in 0usize..150_000,
        damage in proptest::collection::vec((any::<bool>(), any::<u64>()), 0..8),
        order_seed in any::<u64>(),
    ) {
        let n = k + extra;
        block_on(async {
            let fixture = Fixture::new(size, segment_kib * 1024, k, n).await;
            let dirs: Vec<PathBuf> = (0..n)
                .map(|i| fixture.dir.path().join(format!("server-{i:02}")))
                .collect();
            let si = fixture.cap.storage_index().to_string();
            let original = originals(&dirs, &si);
            prop_assert_eq!(original.len(), usize::from(n));
            // Up to n − k shares damaged: each lost or flipped somewhere.
            let mut damaged_shares: Vec<u8> = (0..n as u8).collect();
            damaged_shares.sort_by_key(|s| (u64::from(*s) + 1).wrapping_mul(order_seed | 1));
            let copies = copies_in(&dirs, &si);
            // Copies flipped in their front (header and UEB): one whose UEB no longer hashes
            // to the cap's may be another file's share, so it is left where it is.
            let mut front_flipped = BTreeSet::new();
            for (share, (lose, at)) in damaged_shares.iter().zip(&damage).take(usize::from(extra)) {
                let path = &copies[share][0].0;
                if *lose {
                    std::fs::remove_file(path).unwrap();
                } else {
                    let at = *at as usize % original[share].len();
                    flip(path, at);
                    if (at as u64) < RECORDS_OFFSET {
                        front_flipped.insert(path.clone());
                    }
                }
            }
            let report = repair(&fixture.grid, &fixture.cap.verify_cap(), &RepairOptions::new()).await;
            prop_assert!(
                matches!(report.outcome, Outcome::Healthy | Outcome::Repaired),
                "{}", report.summary()
            );
            let now = copies_in(&dirs, &si);
            prop_assert_eq!(now.len(), usize::from(n), "every share is present");
            for (share, copies) in &now {
                prop_assert!(
                    copies.iter().any(|(_, bytes)| *bytes == original[share]),
                    "share {} has a copy byte for byte the uploader's", share
                );
                for (path, bytes) in copies {
                    prop_assert!(
                        *bytes == original[share] || front_flipped.contains(path),
                        "{} is neither the uploader's share nor a copy left alone: {}",
                        path.display(),
                        report.summary()
                    );
                }
            }
            Ok(())
        })?;
    }
}

#[test]
fn serve_repair_on_read_heals_in_the_background_what_a_read_finds_damaged() {
    let vault = Segvault::new();
    let plaintext = random_bytes(800_000, 51);
    let cap = vault.put_bytes(&plaintext, &["--segment-size", "64KiB"]);
    let si = info_field(&vault, &cap, "storage index:");
    let dirs = embedded_dirs(&vault);
    let original = originals(&dirs, &si);
    let copies = copies_in(&dirs, &si);
    // Share 0, which readers ask first, corrupt in a block; share 9 lost.
    flip(&copies[&0][0].0, original[&0].len() / 2);
    std::fs::remove_file(&copies[&9][0].0).unwrap();
    let damaged = tree_state(&vault.data());
    let path = format!("/uri/{cap}");

    // Without the flag a read heals nothing.
    {
        let server = http::Server::start(&vault.data(), &[]);
        let response = http::get(&server.addr, &path, &[]);
        assert_eq!(response.status, 200);
        assert!(response.body == plaintext);
    }
    assert_eq!(tree_state(&vault.data()), damaged);

    let server = http::Server::start(&vault.data(), &["--repair-on-read"]);
    let response = http::get(&server.addr, &path, &[("Range", "bytes=0-299999")]);
    assert_eq!(response.status, 206);
    assert!(
        response.body == plaintext[..300_000],
        "the read is exact at once"
    );
    process::wait_for(
        "the background repair",
        std::time::Duration::from_secs(60),
        || {
            let now = copies_in(&dirs, &si);
            now.len() == 10
                && now
                    .iter()
                    .all(|(share, copies)| copies.iter().all(|(_, b)| *b == original[share]))
        },
    );
    assert_all_original(&dirs, &si, &original);
    let metrics = http::get(&server.addr, "/metrics", &[]).text();
    let repaired = metrics
        .lines()
        .find(|l| l.starts_with("segvault_background_repairs_total{event=\"repaired\"}"))
        .unwrap_or_else(|| panic!("no repaired count in {metrics}"));
    assert!(
        repaired.ends_with(" 1"),
        "one repair for the file: {repaired}"
    );
    // The healed file reads again without queueing anything new.
    let response = http::get(&server.addr, &path, &[]);
    assert!(response.body == plaintext);
}

#[test]
fn bad_arguments_get_a_clear_error_before_anything_is_touched() {
    let vault = Segvault::new();
    let cap = vault.put_bytes(&random_bytes(50_000, 52), &[]);
    let before = tree_state(&vault.data());
    let missing_list = vault.root.path().join("no-such-list");
    let bad_list = vault.root.path().join("bad-list");
    std::fs::write(&bad_list, format!("{cap}\nnot a cap at all\n")).unwrap();
    let a = vault.root.path().join("a").display().to_string();
    let b = vault.root.path().join("b").display().to_string();
    for (args, says) in [
        (vec!["repair", "sv1-read:nonsense"], "cap"),
        (
            vec!["repair", "--caps", missing_list.to_str().unwrap()],
            "no-such-list",
        ),
        (
            vec!["repair", "--caps", bad_list.to_str().unwrap()],
            "line 2",
        ),
        (vec!["repair", "--jobs", "0", &cap], "--jobs"),
        (vec!["repair", "--happy", "0", &cap], "--happy"),
        (
            vec![
                "--server", &a, "--server", &b, "repair", "--happy", "3", &cap,
            ],
            "more servers than the grid has",
        ),
        (vec!["repair", &cap, "--caps", "-"], "cannot be used with"),
    ] {
        let output = vault.run(&args, None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains(&cap), "{args:?} printed the cap: {stderr}");
    }
    assert_eq!(tree_state(&vault.data()), before, "nothing touched");
    assert!(!Path::new(&a).exists() && !Path::new(&b).exists());
}

#[test]
fn a_forged_cap_naming_a_files_storage_index_writes_nothing() {
    let vault = Segvault::new();
    let cap = vault.put_bytes(&random_bytes(200_000, 53), &[]);
    let shares = vault.share_files(&cap);
    std::fs::remove_file(&shares[0]).unwrap();
    flip(&shares[1], 100_000);
    let before = tree_state(&vault.data());
    // The file's storage index with another UEB hash (and so another file's parameters).
    let verify_cap = info_field(&vault, &cap, "verify cap:");
    let mut fields: Vec<String> = verify_cap.split(':').map(str::to_owned).collect();
    let flipped = if fields[2].starts_with('m') { "n" } else { "m" };
    fields[2].replace_range(0..1, flipped);
    let forged = fields.join(":");
    let output = vault.run(&["repair", &forged], None);
    let report = stdout(&output);
    assert!(!output.status.success(), "{report}");
    assert!(report.starts_with("ALTERED CAP"), "{report}");
    assert!(report.contains("nothing written"), "{report}");
    assert_eq!(
        tree_state(&vault.data()),
        before,
        "no share written or replaced"
    );
    // The real cap still repairs it.
    assert!(vault.run(&["repair", &cap], None).status.success());
}

/// Someone who can write shares plants a whole other file at a file's storage index (its
/// headers rewritten to name it). A verify cap cannot tell the two apart, so repair with
/// either verify cap writes nothing; the read cap's storage index comes from its key, so
/// repair with it heals the real file and leaves the planted shares alone.
#[test]
fn a_whole_file_planted_at_a_files_storage_index_stops_verify_caps_not_the_read_cap() {
    use segvault::core::codec::Codec as _;
    use segvault::core::layout::HEADER_LEN;
    use segvault::core::share_header::ShareHeader;

    let vault = Segvault::new();
    let real = vault.put_bytes(&random_bytes(200_000, 61), &[]);
    let planted = vault.put_bytes(&random_bytes(150_000, 62), &[]);
    let (real_si, planted_si) = (
        info_field(&vault, &real, "storage index:"),
        info_field(&vault, &planted, "storage index:"),
    );
    let dirs = embedded_dirs(&vault);
    let real_shares = copies_in(&dirs, &real_si);
    let header_of_real = ShareHeader::from_bytes(&real_shares[&0][0].1[..HEADER_LEN as usize])
        .expect("the uploader's header");
    // Each planted share goes where the real file has no share of its number.
    let mut planted_files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (share, copies) in copies_in(&dirs, &planted_si) {
        let mut bytes = copies[0].1.clone();
        for (path, _) in &copies {
            std::fs::remove_file(path).unwrap();
        }
        let mut header = ShareHeader::from_bytes(&bytes[..HEADER_LEN as usize]).unwrap();
        header.storage_index = header_of_real.storage_index;
        bytes[..HEADER_LEN as usize].copy_from_slice(&header.to_bytes());
        let to = dirs
            .iter()
            .map(|dir| dir.join("shares").join(&real_si[..2]).join(&real_si))
            .find(|to| !to.join(share.to_string()).exists())
            .expect("a server without this share number");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join(share.to_string()), &bytes).unwrap();
        planted_files.push((to.join(share.to_string()), bytes));
    }
    assert_eq!(planted_files.len(), 10, "the whole planted file");
    // The real file loses two shares.
    for share in [2, 7] {
        std::fs::remove_file(&real_shares[&share][0].0).unwrap();
    }
    let before = tree_state(&vault.data());

    let forged = {
        let planted_verify = info_field(&vault, &planted, "verify cap:");
        let mut fields: Vec<String> = planted_verify.split(':').map(str::to_owned).collect();
        fields[1] = real_si.clone();
        fields.join(":")
    };
    let real_verify = info_field(&vault, &real, "verify cap:");
    for cap in [&forged, &real_verify] {
        let output = vault.run(&["repair", cap], None);
        let report = stdout(&output);
        assert!(!output.status.success(), "{report}");
        assert!(report.starts_with("ALTERED CAP"), "{report}");
        assert!(report.contains("another whole file"), "{report}");
        assert!(report.contains("nothing written"), "{report}");
        assert_eq!(
            tree_state(&vault.data()),
            before,
            "no share written or replaced"
        );
    }

    let output = vault.run(&["repair", &real], None);
    let report = stdout(&output);
    assert!(output.status.success(), "{report}");
    assert!(report.starts_with("repaired"), "{report}");
    let real_now = copies_in(&dirs, &real_si);
    for (share, copies) in &real_shares {
        assert!(
            real_now[share]
                .iter()
                .any(|(_, bytes)| *bytes == copies[0].1),
            "share {share} has the uploader's copy: {report}"
        );
    }
    for (path, bytes) in &planted_files {
        assert!(
            std::fs::read(path).unwrap() == *bytes,
            "{} left alone",
            path.display()
        );
    }
    assert!(vault.ok(&["get", &real], None) == random_bytes(200_000, 61));
}
