//! The `segvault` binary, run as a process against real directories: round trips at every
//! segment edge, lost and corrupted shares, stdin uploads, bad input, and a scan proving no
//! plaintext or key reached the disk.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::process::{self, last_line};
use common::vault::Segvault;
use common::{files_under, random_bytes};

const SEGMENT: u64 = 128 * 1024;

fn empty_directory(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .unwrap();
    }
}

/// Inclusive HTTP-style ranges at every segment edge, the tail, the first and last byte.
fn edge_ranges(size: u64) -> Vec<(u64, u64)> {
    let mut ranges = vec![
        (0, 0),
        (size - 1, size - 1),
        (size.saturating_sub(100), size - 1),
        (0, size - 1),
    ];
    let mut edge = SEGMENT;
    while edge < size {
        ranges.extend([
            (edge - 1, edge),
            (edge, edge),
            (edge - 1, edge - 1),
            (edge - 2, (edge + 2).min(size - 1)),
        ]);
        edge += SEGMENT;
    }
    ranges
}

#[test]
fn round_trips_every_size_and_parameter_set_at_every_segment_edge() {
    let vault = Segvault::new();
    let sizes = [
        0,
        1,
        SEGMENT - 1,
        SEGMENT,
        SEGMENT + 1,
        3 * 1024 * 1024 + 12_345,
    ];
    for (k, n) in [("1", "1"), ("3", "10"), ("5", "7")] {
        for size in sizes {
            let plaintext = random_bytes(size as usize, size ^ 77);
            let cap = vault.put_bytes(&plaintext, &["-k", k, "-n", n]);
            assert_eq!(
                vault.ok(&["get", &cap], None),
                plaintext,
                "whole file, size {size} k={k} n={n}"
            );
            if size == 0 {
                assert_eq!(
                    vault.ok(&["get", &cap, "--range", "-5"], None),
                    b"",
                    "suffix of an empty file"
                );
                assert!(
                    !vault.get(&cap, Some("0-0")).status.success(),
                    "no byte 0 in an empty file"
                );
                continue;
            }
            for (start, end) in edge_ranges(size) {
                let got = vault.ok(&["get", &cap, "--range", &format!("{start}-{end}")], None);
                assert_eq!(
                    got,
                    &plaintext[start as usize..=end as usize],
                    "range {start}-{end} of size {size} k={k} n={n}"
                );
            }
            assert_eq!(
                vault.ok(&["get", &cap, "--range", "-1"], None),
                &plaintext[size as usize - 1..],
                "last byte"
            );
            assert_eq!(
                vault.ok(&["get", &cap, "--range", &format!("{}-", size - 1)], None),
                &plaintext[size as usize - 1..]
            );
            assert_eq!(
                vault.ok(
                    &["get", &cap, "--range", &format!("0-{}", size + 1000)],
                    None
                ),
                plaintext,
                "end past EOF is clamped"
            );
            assert!(
                !vault.get(&cap, Some(&format!("{size}-"))).status.success(),
                "a range starting at EOF is refused"
            );
        }
    }
}

#[test]
fn reads_survive_n_minus_k_lost_servers_and_fail_clearly_beyond() {
    for (k, n) in [(3usize, 10usize), (5, 7), (1, 1)] {
        let vault = Segvault::new();
        let plaintext = random_bytes(700_001, k as u64);
        let cap = vault.put_bytes(
            &plaintext,
            &[
                "-k",
                &k.to_string(),
                "-n",
                &n.to_string(),
                "--segment-size",
                "64KiB",
            ],
        );
        let dirs = vault.dirs_holding(&cap);
        assert_eq!(dirs.len(), n, "one share per server");
        for dir in &dirs[..n - k] {
            empty_directory(dir);
        }
        assert_eq!(
            vault.ok(&["get", &cap], None),
            plaintext,
            "k={k} n={n} with n-k servers emptied"
        );
        empty_directory(&dirs[n - k]);
        let output = vault.get(&cap, None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "k={k} n={n}: must fail with n-k+1 servers emptied"
        );
        assert!(output.stdout.is_empty(), "nothing unverified was written");
        let expected = if k == 1 {
            "not found"
        } else {
            "not enough shares"
        };
        assert!(stderr.contains(expected), "k={k} n={n}: {stderr}");
        assert!(
            stderr.contains(&dirs[n - k].display().to_string()),
            "names the servers: {stderr}"
        );
    }
}

#[test]
fn flipped_share_bytes_never_produce_wrong_output() {
    let vault = Segvault::new();
    let plaintext = random_bytes(600_000, 5);
    let mut successes = 0;
    let mut failures = 0;
    for round in 0..12u64 {
        let cap = vault.put_bytes(&plaintext, &["--segment-size", "64KiB"]);
        let shares = vault.share_files(&cap);
        assert_eq!(shares.len(), 10);
        // Early rounds damage a few shares lightly; later ones damage most shares heavily.
        let damaged = if round < 6 {
            1 + round as usize % 4
        } else {
            8 + round as usize % 3
        };
        let noise = random_bytes(4096, round + 1000);
        for (i, share) in shares.iter().take(damaged).enumerate() {
            let mut bytes = std::fs::read(share).unwrap();
            for flip in 0..(if round < 6 { 3 } else { 40 }) {
                let at = u64::from_le_bytes(
                    noise[(i * 40 + flip) * 8 % 4000..][..8].try_into().unwrap(),
                ) as usize
                    % bytes.len();
                bytes[at] ^= 1 << (flip % 8);
            }
            std::fs::write(share, bytes).unwrap();
        }
        let output = vault.get(&cap, None);
        if output.status.success() {
            assert_eq!(
                output.stdout, plaintext,
                "round {round}: exit 0 must mean exact bytes"
            );
            successes += 1;
        } else {
            failures += 1;
        }
        let verify = vault.run(&["verify", &cap], None);
        assert!(
            !verify.status.success(),
            "round {round}: verify must notice the damage"
        );
    }
    assert!(
        successes >= 6,
        "lightly damaged files must still read ({successes} of 12 did)"
    );
    assert!(failures + successes == 12);
}

#[test]
fn uploads_from_stdin_and_pipes() {
    let vault = Segvault::new();
    for size in [0usize, 1, 300_001] {
        let plaintext = random_bytes(size, 11);
        let cap = last_line(&vault.ok(&["put", "-k", "2", "-n", "4", "-"], Some(&plaintext)));
        assert_eq!(
            vault.ok(&["get", &cap], None),
            plaintext,
            "stdin upload of {size} bytes"
        );
        // The cap can come from stdin too.
        assert_eq!(
            vault.ok(&["get", "-"], Some(format!("{cap}\n").as_bytes())),
            plaintext
        );
    }
}

#[test]
fn output_files_appear_only_when_complete() {
    let vault = Segvault::new();
    let plaintext = random_bytes(500_000, 3);
    let cap = vault.put_bytes(&plaintext, &["-k", "2", "-n", "3"]);
    let out_dir = tempfile::tempdir().unwrap();
    let target = out_dir.path().join("copy.bin");
    vault.ok(&["get", &cap, "-o", target.to_str().unwrap()], None);
    assert_eq!(std::fs::read(&target).unwrap(), plaintext);

    let dirs = vault.dirs_holding(&cap);
    empty_directory(&dirs[0]);
    empty_directory(&dirs[1]);
    let second = out_dir.path().join("second.bin");
    assert!(
        !vault
            .run(&["get", &cap, "-o", second.to_str().unwrap()], None)
            .status
            .success()
    );
    assert!(!second.exists(), "no output file after a failed read");
    assert_eq!(
        files_under(out_dir.path()),
        vec![target],
        "no partial file left behind"
    );
}

#[test]
fn verify_and_info_report_the_state_of_the_shares() {
    let vault = Segvault::new();
    let cap = vault.put_bytes(&random_bytes(400_000, 8), &[]);
    let info = String::from_utf8(vault.ok(&["info", &cap], None)).unwrap();
    for expected in [
        "size:          400000 bytes",
        "k:             3",
        "n:             10",
        "segment size:  131072",
        "shares found:  10 of 10",
    ] {
        assert!(info.contains(expected), "{info}");
    }
    let verify_cap = info
        .lines()
        .find_map(|l| l.strip_prefix("verify cap:"))
        .unwrap()
        .trim()
        .to_owned();
    let healthy = vault.run(&["verify", &verify_cap], None);
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("healthy"));
    assert!(
        !vault.get(&verify_cap, None).status.success(),
        "a verify cap cannot read"
    );

    let dirs = vault.dirs_holding(&cap);
    empty_directory(&dirs[0]);
    let share = vault
        .share_files(&cap)
        .into_iter()
        .find(|f| f.starts_with(&dirs[1]))
        .unwrap();
    let mut bytes = std::fs::read(&share).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&share, bytes).unwrap();
    let damaged = vault.run(&["verify", &cap], None);
    let report = String::from_utf8_lossy(&damaged.stdout);
    assert!(!damaged.status.success(), "{report}");
    assert!(report.contains("missing shares"), "{report}");
    assert!(report.contains("BAD"), "{report}");
    assert!(
        report.contains(&dirs[1].display().to_string()),
        "names where the bad share is: {report}"
    );
}

#[test]
fn verify_checks_a_list_of_caps_a_line_per_file_and_sums_up() {
    let vault = Segvault::new();
    let healthy = vault.put_bytes(&random_bytes(300_000, 21), &[]);
    let damaged = vault.put_bytes(&random_bytes(300_000, 22), &[]);
    let lost = vault.put_bytes(&random_bytes(300_000, 23), &[]);
    let damaged_shares = vault.share_files(&damaged);
    std::fs::remove_file(&damaged_shares[0]).unwrap();
    let mut bytes = std::fs::read(&damaged_shares[1]).unwrap();
    bytes[2000] ^= 0x55;
    std::fs::write(&damaged_shares[1], bytes).unwrap();
    // Two shares left of k = 3.
    for share in &vault.share_files(&lost)[2..] {
        std::fs::remove_file(share).unwrap();
    }
    // A verify cap of the healthy file with one character of its UEB hash changed.
    let info = String::from_utf8(vault.ok(&["info", &healthy], None)).unwrap();
    let verify_cap = info
        .lines()
        .find_map(|l| l.strip_prefix("verify cap:"))
        .unwrap()
        .trim();
    let mut fields: Vec<String> = verify_cap.split(':').map(str::to_owned).collect();
    let flipped = if fields[2].starts_with('m') { "n" } else { "m" };
    fields[2].replace_range(0..1, flipped);
    let altered = fields.join(":");
    let list = vault.root.path().join("caps.txt");
    std::fs::write(
        &list,
        format!(
            "# four films\nholiday.mp4 {healthy}\n\n{damaged}\nthe lost one {lost}\nretyped {altered}\n"
        ),
    )
    .unwrap();

    let output = vault.run(
        &["verify", "--caps", list.to_str().unwrap(), "--jobs", "2"],
        None,
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{report}");
    let line_of = |line: &str| {
        report
            .lines()
            .find(|l| l.contains(&format!("(line {line}")))
            .unwrap_or_else(|| panic!("no line {line}: {report}"))
            .to_owned()
    };
    let first = line_of("2");
    assert!(
        first.starts_with("healthy") && first.contains("holiday.mp4"),
        "{first}"
    );
    assert!(first.contains("10 of 10 shares good"), "{first}");
    let second = line_of("4");
    assert!(second.starts_with("UNHEALTHY"), "{second}");
    assert!(
        second.contains("8 of 10 shares good")
            && second.contains("missing")
            && second.contains("bad"),
        "{second}"
    );
    let third = line_of("5");
    assert!(
        third.starts_with("UNRECOVERABLE") && third.contains("the lost one"),
        "{third}"
    );
    assert!(
        report.ends_with(
            "4 files: 1 healthy, 1 unhealthy (repairable), 1 unrecoverable, 1 with an altered cap\n"
        ),
        "{report}"
    );
    let fourth = line_of("6");
    assert!(
        fourth.starts_with("ALTERED CAP") && fourth.contains("retyped"),
        "{fourth}"
    );
    assert!(fourth.contains("altered or mistyped"), "{fourth}");
    for cap in [&healthy, &damaged, &lost, &altered] {
        assert!(
            !report.contains(cap.as_str()),
            "a cap was printed: {report}"
        );
    }

    // From stdin; a healthy list exits 0.
    let output = vault.run(
        &["verify", "--caps", "-"],
        Some(format!("{healthy}\n").as_bytes()),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // A bad line stops it before any file is checked, naming the line and not quoting it.
    let secret = format!("sv1-read:{}:short:3:10:131072:5", "q".repeat(52));
    std::fs::write(&list, format!("{healthy}\nbroken {secret}\n")).unwrap();
    let output = vault.run(&["verify", "--caps", list.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(!stderr.contains(&"q".repeat(52)), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // A cap and a list together, or no jobs, are refused by the parser.
    assert!(
        !vault
            .run(&["verify", &healthy, "--caps", "-"], None)
            .status
            .success()
    );
    assert!(
        !vault
            .run(&["verify", "--caps", "-", "--jobs", "0"], Some(b""))
            .status
            .success()
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_no_panic() {
    let vault = Segvault::new();
    let cap = vault.put_bytes(b"some bytes", &[]);
    let verify_cap = String::from_utf8(vault.ok(&["info", &cap], None))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("verify cap:").map(|c| c.trim().to_owned()))
        .unwrap();
    let input = vault.root.path().join("in");
    std::fs::write(&input, b"x").unwrap();
    let input = input.to_str().unwrap().to_owned();
    let (dir_a, dir_b) = (format!("{input}.a"), format!("{input}.b"));
    let truncated = cap[..cap.len() - 3].to_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["get", "sv1-read:abc"], "malformed read cap"),
        (vec!["get", "hello"], "not a segvault cap"),
        (vec!["get", &truncated], "cap"),
        (vec!["get", &verify_cap], "verify cap"),
        (vec!["get", &cap, "--range", "5-2"], "invalid --range"),
        (vec!["get", &cap, "--range", "x"], "invalid --range"),
        (vec!["get", &cap, "--range", "100-200"], "outside the file"),
        (
            vec!["put", "-k", "4", "-n", "3", &input],
            "must not exceed n",
        ),
        (vec!["put", "-k", "0", &input], "at least 1"),
        (vec!["put", "-n", "300", &input], "between 1 and 256"),
        (vec!["put", "-n", "0", &input], "between 1 and 256"),
        (vec!["put", "--segment-size", "0", &input], "segment size 0"),
        (
            vec!["put", "--segment-size", "100MiB", &input],
            "segment size",
        ),
        (
            vec!["put", "--segment-size", "lots", &input],
            "invalid size",
        ),
        (vec!["put", "--happy", "11", &input], "happy"),
        (vec!["put", "/no/such/file"], "cannot read /no/such/file"),
        (vec!["put", "/"], "is a directory"),
        (
            vec!["put", "--server", "http://127.0.0.1:1", &input],
            "only 0 of 1 servers answered",
        ),
        (
            vec!["put", "--server", "ftp://127.0.0.1:1", &input],
            "a storage node is https://host:port#spki-sha256=",
        ),
        (
            vec!["put", "--server", "http://user:s3cret@127.0.0.1:1", &input],
            "without credentials",
        ),
        (
            vec!["put", "--server", &dir_a, "--server", &dir_a, &input],
            "more than once",
        ),
        (
            vec![
                "put", "--happy", "3", "--server", &dir_a, "--server", &dir_b, &input,
            ],
            "cannot exceed the 2 servers",
        ),
        (vec!["info", "sv1-verify:"], "malformed verify cap"),
    ];
    for (args, expected) in cases {
        let output = vault.run(&args, None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
        assert!(
            !stderr.contains(&cap[9..61]) && !stderr.contains("s3cret"),
            "{args:?}: an error quoted a secret: {stderr}"
        );
    }
}

#[test]
fn explicit_server_directories_work_including_more_shares_than_servers() {
    let vault = Segvault::new();
    let servers: Vec<String> = (0..4)
        .map(|i| {
            vault
                .root
                .path()
                .join(format!("node{i}"))
                .display()
                .to_string()
        })
        .collect();
    let mut server_args = Vec::new();
    for s in &servers {
        server_args.extend(["--server", s.as_str()]);
    }
    let plaintext = random_bytes(1_000_000, 4);
    let mut put = server_args.clone();
    put.extend(["-k", "3", "-n", "10"]);
    let cap = vault.put_bytes(&plaintext, &put);
    let mut get = server_args.clone();
    get.extend(["get", &cap]);
    assert_eq!(vault.ok(&get, None), plaintext);
    for s in &servers {
        assert!(
            !files_under(Path::new(s)).is_empty(),
            "every server took shares"
        );
    }
    assert!(
        !vault.data().exists(),
        "the embedded grid is not touched when --server is given"
    );
}

/// Every 16-byte-aligned chunk of the plaintext. Any 32-byte window of the plaintext that
/// appears in a file contains one of these whole, so scanning for them finds every such leak.
fn aligned_chunks(plaintext: &[u8]) -> HashSet<[u8; 16]> {
    plaintext
        .chunks_exact(16)
        .map(|c| c.try_into().unwrap())
        .collect()
}

#[test]
fn no_plaintext_or_key_ever_reaches_the_disk() {
    let vault = Segvault::new();
    let files: Vec<Vec<u8>> = [1usize << 20, 333_333, 4096]
        .iter()
        .enumerate()
        .map(|(i, &n)| random_bytes(n, 900 + i as u64))
        .collect();
    let caps = vec![
        vault.put_bytes(&files[0], &[]),
        last_line(&vault.ok(&["put", "-k", "2", "-n", "5", "-"], Some(&files[1]))),
        vault.put_bytes(&files[2], &["-k", "1", "-n", "1"]),
    ];
    for cap in &caps {
        vault.ok(&["get", cap, "--range", "1000-200000"], None);
        vault.ok(&["verify", cap], None);
    }

    let mut needles: HashSet<[u8; 16]> = files.iter().flat_map(|f| aligned_chunks(f)).collect();
    let mut keys = Vec::new();
    for cap in &caps {
        let key_text = cap.split(':').nth(1).unwrap();
        keys.push(key_text.as_bytes().to_vec());
        let key = data_encoding_lower(key_text);
        needles.insert(key[..16].try_into().unwrap());
        needles.insert(key[16..].try_into().unwrap());
    }
    let scanned = files_under(vault.root.path());
    assert!(
        scanned.len() > 10 + 5,
        "the scan sees every share ({} files)",
        scanned.len()
    );
    for path in scanned {
        let bytes = std::fs::read(&path).unwrap();
        for window in bytes.windows(16) {
            assert!(
                !needles.contains(window),
                "{} holds plaintext or key bytes",
                path.display()
            );
        }
        for key in &keys {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_slice()),
                "{} holds a cap",
                path.display()
            );
        }
    }
}

/// Decodes a cap's lowercase base32 key field.
fn data_encoding_lower(text: &str) -> Vec<u8> {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bits = 0u64;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        bits = bits << 5 | alphabet.iter().position(|&a| a == c).unwrap() as u64;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// `--data`, `--server`, `--grid` and `--token-file` work before the subcommand and after it.
#[test]
fn global_flags_work_before_and_after_the_subcommand() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("input");
    let bytes = random_bytes(70_000, 11);
    std::fs::write(&input, &bytes).unwrap();
    let data = root.path().join("data");
    let (data, input) = (data.to_str().unwrap(), input.to_str().unwrap());
    let out = root.path().join("out");
    let read_back = |cap: &str, before: &[&str], after: &[&str]| {
        let _ = std::fs::remove_file(&out);
        process::ok(
            process::segvault()
                .args(before)
                .arg("get")
                .args(after)
                .args([cap, "-o", out.to_str().unwrap()]),
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            bytes,
            "get {before:?} get {after:?}"
        );
    };

    // The embedded grid in --data.
    let before = process::put(process::segvault().args(["--data", data, "put", input]));
    let after = process::put(process::segvault().args(["put", "--data", data, input]));
    read_back(&before, &[], &["--data", data]);
    read_back(&after, &["--data", data], &[]);

    // --server directories, and a grid file naming them, with a token file beside it.
    let servers: Vec<String> = (0..4)
        .map(|i| {
            root.path()
                .join(format!("s{i}"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let server_args: Vec<&str> = servers
        .iter()
        .flat_map(|s| ["--server", s.as_str()])
        .collect();
    let mut put_after = vec!["put", "-k", "2", "-n", "4"];
    put_after.extend(&server_args);
    put_after.push(input);
    let cap = process::put(process::segvault().args(&put_after));
    read_back(&cap, &server_args, &[]);
    read_back(&cap, &[], &server_args);

    let grid = root.path().join("grid.toml");
    let quoted: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    std::fs::write(&grid, format!("servers = [{}]\n", quoted.join(", "))).unwrap();
    let token = root.path().join("token");
    std::fs::write(&token, "a-token-the-directories-ignore\n").unwrap();
    let grid = grid.to_str().unwrap();
    let token = token.to_str().unwrap();
    read_back(&cap, &["--grid", grid, "--token-file", token], &[]);
    read_back(&cap, &[], &["--grid", grid, "--token-file", token]);
}
