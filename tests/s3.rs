//! Shares in S3 buckets on real S3 servers on loopback: the `ShareStore` conformance suite
//! and multipart behaviour on `s3s-fs`; files put and read through the command line and the
//! gateway on a mixed grid (directories, storage nodes, buckets), on buckets that go away,
//! hold overwritten objects or refuse our credentials; and a three-node Garage cluster
//! losing nodes mid-read. Every read is compared with the plaintext.
//!
//! Needs `s3s-fs` and `garage` (`.ci/run` installs them and sets `SEGVAULT_S3_TESTS=1`, which
//! turns a missing one into a failure; without it, each test says what is missing and passes
//! vacuously).

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::grid::Node;
use common::http::{self, Server};
use common::process;
use common::random_bytes;
use common::s3::{ACCESS_KEY, Endpoint, Garage, S3sFs, SECRET_KEY};
use object_store::ObjectStoreExt as _;
use segvault::core::cap::{ReadCap, StorageIndex};
use segvault::core::geometry::ShareNum;
use segvault::store::testing::conformance;
use segvault::store::{S3Options, S3Store, ShareStore, SpooledShare, StoreError};

fn spool(bytes: &[u8]) -> SpooledShare {
    let spool = SpooledShare::create(&std::env::temp_dir(), bytes.len() as u64).unwrap();
    spool.file().write_all_at(bytes, 0).unwrap();
    spool
}

fn storage_index(seed: u8) -> StorageIndex {
    let mut si = [seed; 16];
    getrandom::fill(&mut si[..8]).unwrap();
    StorageIndex(si)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_conformance_suite_passes_on_s3s_fs() {
    let Some(server) = S3sFs::start(&["conformance"]) else {
        return;
    };
    let store = S3Store::new("s3://conformance/some/prefix", &server.options()).unwrap();
    conformance::run(&store).await;
    let bare = S3Store::new("s3://conformance", &server.options()).unwrap();
    conformance::run(&bare).await;
    assert!(server.pending_uploads().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_conformance_suite_passes_on_garage() {
    let Some(garage) = tokio::task::spawn_blocking(|| Garage::start(&["conformance"]))
        .await
        .unwrap()
    else {
        return;
    };
    let store = S3Store::new("s3://conformance/p", &garage.options()).unwrap();
    conformance::run(&store).await;
    tokio::task::spawn_blocking(move || drop(garage))
        .await
        .unwrap();
}

/// A share larger than a part goes up in parts, reads back exactly, and is create-only like
/// a small one.
#[tokio::test(flavor = "multi_thread")]
async fn large_shares_go_up_in_parts_and_stay_immutable() {
    let Some(server) = S3sFs::start(&["multipart"]) else {
        return;
    };
    let mut options = server.options();
    options.part_size = 5 << 20;
    let store = S3Store::new("s3://multipart", &options).unwrap();
    let si = storage_index(1);
    let bytes = random_bytes(13 << 20, 3);
    let len = bytes.len() as u64;
    store.write(si, ShareNum(2), spool(&bytes)).await.unwrap();
    assert!(
        server.pending_uploads().is_empty(),
        "completed, not pending"
    );
    let ranges = vec![0..1, (5 << 20) - 3..(5 << 20) + 3, len - 100..len, 7..7];
    let got = store.read(si, ShareNum(2), ranges.clone()).await.unwrap();
    for (range, part) in ranges.iter().zip(&got) {
        assert_eq!(&part[..], &bytes[range.start as usize..range.end as usize]);
    }
    store.write(si, ShareNum(2), spool(&bytes)).await.unwrap();
    let mut other = bytes.clone();
    other[9 << 20] ^= 1;
    assert!(matches!(
        store.write(si, ShareNum(2), spool(&other)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.read(si, ShareNum(2), vec![len - 1..len + 1]).await,
        Err(StoreError::OutOfBounds { len: l, .. }) if l == len
    ));
    assert!(matches!(
        store.read(si, ShareNum(2), vec![len + 10..len + 20]).await,
        Err(StoreError::OutOfBounds { .. })
    ));

    // Six large shares at once through one handle share its write memory (two parts):
    // all of them land, exact.
    let shares: Vec<Vec<u8>> = (0..6u64).map(|i| random_bytes(11 << 20, 100 + i)).collect();
    let writes = shares
        .iter()
        .enumerate()
        .map(|(i, bytes)| store.write(si, ShareNum(10 + i as u8), spool(bytes)));
    for written in futures::future::join_all(writes).await {
        written.unwrap();
    }
    for (i, bytes) in shares.iter().enumerate() {
        let share = ShareNum(10 + i as u8);
        let tail = bytes.len() as u64 - 1000..bytes.len() as u64;
        let got = store
            .read(si, share, vec![0..1000, tail.clone()])
            .await
            .unwrap();
        assert!(got[0] == bytes[..1000] && got[1] == bytes[tail.start as usize..]);
    }
    assert!(server.pending_uploads().is_empty());
}

/// A write cancelled between parts leaves neither an object nor a pending multipart upload
/// once the upload takes it back.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_multipart_write_leaves_nothing() {
    let Some(server) = S3sFs::start(&["cancelled"]) else {
        return;
    };
    let mut options = server.options();
    options.part_size = 5 << 20;
    let store = Arc::new(S3Store::new("s3://cancelled", &options).unwrap());
    let si = storage_index(2);
    let bytes = random_bytes(60 << 20, 4);
    let writing = {
        let (store, spool) = (store.clone(), spool(&bytes));
        tokio::spawn(async move { store.write(si, ShareNum(0), spool).await })
    };
    let root = server.root.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let parts = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".part-"));
        if parts {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no part was uploaded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writing.abort();
    assert!(writing.await.unwrap_err().is_cancelled());
    store.abandon(si, ShareNum(0)).await.unwrap();
    assert!(
        store.list(si).await.unwrap().is_empty(),
        "no share is visible"
    );
    assert_eq!(
        server.pending_uploads(),
        Vec::<String>::new(),
        "no pending upload"
    );
}

/// S3 errors become the store's kinds, naming the bucket, never the secret.
#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_bucket_and_never_the_secret() {
    let Some(server) = S3sFs::start(&["errors"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(
        &wrong,
        format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = not-{SECRET_KEY}\n"),
    )
    .unwrap();
    let mut options = server.options();
    options.credentials_file = Some(wrong);
    let store = S3Store::new("s3://errors", &options).unwrap();
    let error = store.list(storage_index(3)).await.unwrap_err();
    assert!(matches!(error, StoreError::Forbidden(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("s3://errors") && !text.contains(SECRET_KEY),
        "{text}"
    );
    assert!(store.check().await.is_err());

    let missing = S3Store::new("s3://no-such-bucket", &server.options()).unwrap();
    let text = missing.check().await.unwrap_err().to_string();
    assert!(text.contains("s3://no-such-bucket"), "{text}");

    let mut options = server.options();
    options.endpoint = Some("http://127.0.0.1:1".into());
    let down = S3Store::new("s3://errors", &options).unwrap();
    let text = down
        .read(storage_index(4), ShareNum(0), vec![0..1])
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("s3://errors"), "{text}");

    // A plain-HTTP endpoint is used only where allowed: otherwise refused before any
    // request, naming the bucket and the setting.
    let mut options = server.options();
    options.allow_http = Some(false);
    let text = S3Store::new("s3://errors", &options)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("s3://errors") && text.contains("allow_http"),
        "{text}"
    );

    for bad in ["s3://ab", "s3://key:secret@bucket", "s3://Bucket"] {
        let text = S3Store::new(bad, &S3Options::default())
            .unwrap_err()
            .to_string();
        assert!(!text.contains("secret@"), "{text}");
    }
}

/// A grid file of buckets (each its own s3s-fs process, so that one can go away).
struct Buckets {
    servers: Vec<S3sFs>,
    dir: tempfile::TempDir,
}

impl Buckets {
    /// `None` when s3s-fs is not installed (and not required).
    fn start(count: usize) -> Option<Buckets> {
        let servers = (0..count)
            .map(|i| S3sFs::start(&[&format!("bucket-{i}")]))
            .collect::<Option<_>>()?;
        Some(Buckets {
            servers,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn entries(&self) -> Vec<String> {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| s.grid_entry(&format!("s3://bucket-{i}/segvault")))
            .collect()
    }

    /// The client's data directory.
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("client")
    }

    /// Our store for bucket `i`.
    fn store(&self, i: usize) -> S3Store {
        S3Store::new(
            &format!("s3://bucket-{i}/segvault"),
            &self.servers[i].options(),
        )
        .unwrap()
    }

    /// An S3 client of our own for bucket `i`, to change objects behind segvault's back.
    fn client(&self, i: usize) -> object_store::aws::AmazonS3 {
        let server = &self.servers[i];
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(format!("bucket-{i}"))
            .with_endpoint(server.endpoint())
            .with_region(server.region())
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Puts `plaintext` with k = `k` and one share per bucket; the grid file and the cap.
    fn put(&self, plaintext: &[u8], k: u16) -> (std::path::PathBuf, String) {
        let grid = self.grid_file(&[]);
        let n = self.servers.len() as u16;
        let cap = put_with_grid(&grid, &self.data(), plaintext, k, n);
        (grid, cap)
    }

    /// A grid file with these buckets and `others` (directories, storage-node URLs).
    fn grid_file(&self, others: &[String]) -> std::path::PathBuf {
        let mut servers: Vec<String> = others.iter().map(|o| format!("{o:?}")).collect();
        servers.extend(self.entries());
        let path = self.dir.path().join("grid.toml");
        std::fs::write(
            &path,
            format!("servers = [\n  {}\n]\n", servers.join(",\n  ")),
        )
        .unwrap();
        path
    }
}

fn put_with_grid(
    grid: &std::path::Path,
    data: &std::path::Path,
    bytes: &[u8],
    k: u16,
    n: u16,
) -> String {
    let input = data.with_extension("input");
    std::fs::write(&input, bytes).unwrap();
    process::put(
        process::segvault()
            .arg("--data")
            .arg(data)
            .arg("--grid")
            .arg(grid)
            .args(["put", "-k", &k.to_string(), "-n", &n.to_string()])
            .arg(&input),
    )
}

fn get_range(
    grid: &std::path::Path,
    data: &std::path::Path,
    cap: &str,
    range: Option<&str>,
) -> std::process::Output {
    let mut command = process::segvault();
    command
        .arg("--data")
        .arg(data)
        .arg("--grid")
        .arg(grid)
        .arg("get");
    if let Some(range) = range {
        command.args(["--range", range]);
    }
    process::run(command.arg(cap))
}

fn assert_ranges_exact(
    grid: &std::path::Path,
    data: &std::path::Path,
    cap: &str,
    plaintext: &[u8],
    segment: usize,
) {
    let len = plaintext.len();
    let output = get_range(grid, data, cap, None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == plaintext, "full get differs");
    for (start, end) in [
        (0, 0),
        (segment - 1, segment),
        (segment, 2 * segment + 5),
        (len - 1, len - 1),
        (len / 2, len - 1),
    ] {
        let output = get_range(grid, data, cap, Some(&format!("{start}-{end}")));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stdout == plaintext[start..=end],
            "range {start}-{end} differs"
        );
    }
}

/// 3 directories + 4 storage nodes + 3 buckets: any 3 of the 10 restore every byte.
#[test]
fn a_mixed_grid_of_directories_nodes_and_buckets_reads_exactly() {
    let Some(buckets) = Buckets::start(3) else {
        return;
    };
    let dirs: Vec<String> = (0..3)
        .map(|i| {
            buckets
                .dir
                .path()
                .join(format!("disk{i}"))
                .display()
                .to_string()
        })
        .collect();
    let nodes: Vec<Node> = (0..4)
        .map(|i| Node::start(&buckets.dir.path().join(format!("node{i}")), None))
        .collect();
    let mut others = dirs.clone();
    others.extend(nodes.iter().map(|n| n.url.clone()));
    let grid = buckets.grid_file(&others);
    let data = buckets.data();
    let plaintext = random_bytes(3 << 20, 11);
    let cap = put_with_grid(&grid, &data, &plaintext, 3, 10);
    for (i, server) in buckets.servers.iter().enumerate() {
        let held = common::files_under(&server.root.join(format!("bucket-{i}")));
        assert_eq!(held.len(), 1, "one share in bucket {i}: {held:?}");
    }
    assert_ranges_exact(&grid, &data, &cap, &plaintext, 128 << 10);

    // Only the buckets left: still exact (3 shares, k = 3).
    let only_buckets = buckets.grid_file(&[]);
    assert_ranges_exact(&only_buckets, &data, &cap, &plaintext, 128 << 10);
}

/// A bucket whose server stalls (SIGSTOP) mid-use: reads go on, exact, around it; a full
/// read in flight when it stalls finishes exact.
#[test]
fn a_stalled_bucket_is_routed_around() {
    let Some(buckets) = Buckets::start(5) else {
        return;
    };
    let data = buckets.data();
    let plaintext = random_bytes((3 << 20) + 5, 17);
    let (grid, cap) = buckets.put(&plaintext, 2);
    let gateway = Server::start(&data, &["--grid", grid.to_str().unwrap()]);
    let path = format!("/uri/{cap}");
    let warm = http::get(&gateway.addr, &path, &[("Range", "bytes=0-99")]);
    assert_eq!(warm.status, 206);
    // The buckets holding the primary shares: the ones a healthy read uses.
    let si = cap.parse::<ReadCap>().unwrap().storage_index();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let primaries: Vec<usize> = (0..buckets.servers.len())
        .filter(|&i| {
            let shares = runtime.block_on(buckets.store(i).list(si)).unwrap();
            shares.iter().any(|s| s.0 < 2)
        })
        .collect();
    assert_eq!(primaries.len(), 2, "shares 0 and 1 are on two buckets");
    for stalled in primaries {
        process::signal(buckets.servers[stalled].child.id(), "STOP");
        let response = http::get(&gateway.addr, &path, &[]);
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(
            response.body == plaintext,
            "full read around stalled bucket {stalled}"
        );
        let response = http::get(&gateway.addr, &path, &[("Range", "bytes=2000000-2100000")]);
        assert_eq!(response.status, 206, "{}", response.text());
        assert!(response.body == plaintext[2_000_000..=2_100_000]);
        process::signal(buckets.servers[stalled].child.id(), "CONT");
    }
}

/// Buckets going away down to k: exact; below k: a 503 naming each bucket and why.
#[test]
fn unreachable_buckets_are_routed_around_down_to_k() {
    let Some(mut buckets) = Buckets::start(5) else {
        return;
    };
    let data = buckets.data();
    let plaintext = random_bytes((1 << 20) + 17, 12);
    let (grid, cap) = buckets.put(&plaintext, 2);
    let gateway = Server::start(&data, &["--grid", grid.to_str().unwrap()]);
    let path = format!("/uri/{cap}");
    for down in 0..3 {
        buckets.servers[down].kill();
        let response = http::get(&gateway.addr, &path, &[("Range", "bytes=1000-300000")]);
        assert_eq!(
            response.status,
            206,
            "{} down: {}",
            down + 1,
            response.text()
        );
        assert!(response.body == plaintext[1000..=300000]);
    }
    buckets.servers[3].kill();
    let response = http::get(&gateway.addr, &path, &[("Range", "bytes=0-10")]);
    assert_eq!(response.status, 503, "{}", response.text());
    let text = response.text();
    for i in 0..4 {
        assert!(
            text.contains(&format!("s3://bucket-{i}/segvault")),
            "{text}"
        );
    }
    assert!(!text.contains(SECRET_KEY));
}

/// Objects replaced through the S3 API with other bytes: reads are exact or refused, and
/// `verify` names the bad shares.
#[test]
fn objects_overwritten_in_a_bucket_never_give_wrong_bytes() {
    let Some(buckets) = Buckets::start(4) else {
        return;
    };
    let data = buckets.data();
    let plaintext = random_bytes(700_000, 13);
    let (grid, cap) = buckets.put(&plaintext, 2);
    let read_cap: ReadCap = cap.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Two of four shares rewritten in place with flipped bytes, through S3 itself.
    for i in 0..2 {
        let store = buckets.store(i);
        let share = runtime
            .block_on(store.list(read_cap.storage_index()))
            .unwrap()[0];
        let key = store.key(&read_cap.storage_index(), share);
        let client = buckets.client(i);
        let path = object_store::path::Path::from(key);
        runtime.block_on(async {
            let mut bytes = client
                .get(&path)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec();
            let at = bytes.len() / 2 + i;
            bytes[at] ^= 0x40;
            client.put(&path, bytes.into()).await.unwrap();
        });
    }
    assert_ranges_exact(&grid, &data, &cap, &plaintext, 128 << 10);
    let output = process::run(
        process::segvault()
            .arg("--data")
            .arg(&data)
            .arg("--grid")
            .arg(&grid)
            .args(["verify", &cap]),
    );
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "verify must fail: {report}");
    for i in 0..2 {
        assert!(
            report
                .lines()
                .any(|l| l.contains(&format!("s3://bucket-{i}/segvault")) && !l.ends_with(": ok")),
            "verify names bucket {i}: {report}"
        );
    }
}

/// Credentials and endpoint from the standard AWS variables, `--server s3://…` on the
/// command line; wrong credentials say which bucket refused, never the secret.
#[test]
fn the_command_line_takes_buckets_from_the_aws_environment() {
    let Some(server) = S3sFs::start(&["env-one", "env-two", "env-three"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let plaintext = random_bytes(400_000, 14);
    std::fs::write(&input, &plaintext).unwrap();
    let with_env = |secret: &str| {
        let mut command = process::segvault();
        command
            .envs(server.env())
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .arg("--data")
            .arg(dir.path().join("client"));
        for bucket in ["env-one", "env-two", "env-three"] {
            command.args(["--server", &format!("s3://{bucket}")]);
        }
        command
    };
    let cap = process::put(
        with_env(SECRET_KEY)
            .args(["put", "-k", "2", "-n", "3"])
            .arg(&input),
    );
    let got = process::ok(with_env(SECRET_KEY).args(["get", "--range", "100-299999", &cap]));
    assert!(got == plaintext[100..300_000]);

    let wrong = "wr0ngwr0ngwr0ngwr0ngwr0ngwr0ngwr0ngwr0ng";
    for args in [vec!["get", &cap], vec!["put", input.to_str().unwrap()]] {
        let output = process::run(with_env(wrong).args(&args));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("s3://env-two") && stderr.contains("access denied"),
            "{stderr}"
        );
        assert!(
            !stderr.contains(wrong) && !stderr.contains(SECRET_KEY),
            "{stderr}"
        );
    }
}

/// `segvault put` interrupted (SIGINT) while its shares go up in parts: nothing visible is
/// left, and no multipart upload is pending.
#[test]
fn an_interrupted_put_leaves_no_share_and_no_pending_upload() {
    let Some(buckets) = Buckets::start(3) else {
        return;
    };
    let grid = buckets.grid_file(&[]);
    let data = buckets.data();
    let input = buckets.dir.path().join("big");
    std::fs::write(&input, random_bytes(120 << 20, 15)).unwrap();
    let mut child = process::segvault()
        .arg("--data")
        .arg(&data)
        .arg("--grid")
        .arg(&grid)
        .args(["put", "-k", "2", "-n", "3"])
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    process::wait_for(
        "a multipart upload to begin",
        Duration::from_secs(120),
        || {
            buckets.servers.iter().any(|s| {
                s.pending_uploads()
                    .iter()
                    .any(|name| name.contains(".part-"))
            })
        },
    );
    process::signal(child.id(), "INT");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    for (i, server) in buckets.servers.iter().enumerate() {
        assert_eq!(
            server.pending_uploads(),
            Vec::<String>::new(),
            "bucket {i}: {stderr}"
        );
        let held = common::files_under(&server.root.join(format!("bucket-{i}")));
        assert!(held.is_empty(), "bucket {i} holds {held:?}");
    }
}

/// Ten buckets on a three-node Garage cluster (replication 3), each bucket reached through
/// one of the nodes: exact reads; one node stopped mid-read, reads go on; two stopped, exact
/// or a clear error; all back, exact.
#[test]
fn ten_buckets_on_a_garage_cluster_survive_a_node_going_down() {
    let names: Vec<String> = (0..10).map(|i| format!("media-{i}")).collect();
    let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some(mut garage) = Garage::start(&names_ref) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| garage.grid_entry_via(i % 3, &format!("s3://{name}")))
        .collect();
    let grid = dir.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!("servers = [\n  {}\n]\n", entries.join(",\n  ")),
    )
    .unwrap();
    let data = dir.path().join("client");
    let plaintext = random_bytes(6 << 20, 16);
    let cap = put_with_grid(&grid, &data, &plaintext, 3, 10);
    assert_ranges_exact(&grid, &data, &cap, &plaintext, 128 << 10);

    let gateway = Server::start(&data, &["--grid", grid.to_str().unwrap()]);
    let path = format!("/uri/{cap}");
    // A full read in flight while node 2 goes down.
    let mut stream = std::net::TcpStream::connect(&gateway.addr).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut first = vec![0u8; 64 << 10];
    stream.read_exact(&mut first).unwrap();
    garage.stop_node(2);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    let response = http::parse(&first);
    assert_eq!(response.status, 200);
    assert!(
        response.body == plaintext,
        "the read in flight went on, exact"
    );
    let response = http::get(&gateway.addr, &path, &[("Range", "bytes=4000000-4100000")]);
    assert_eq!(response.status, 206, "{}", response.text());
    assert!(response.body == plaintext[4_000_000..=4_100_000]);

    // Two nodes down: Garage has no quorum. Exact or a clear error, never wrong bytes.
    garage.stop_node(1);
    let response = http::get(&gateway.addr, &path, &[("Range", "bytes=5000000-5000999")]);
    match response.status {
        206 => assert!(response.body == plaintext[5_000_000..5_001_000]),
        503 => assert!(
            response.text().contains("s3://media-"),
            "{}",
            response.text()
        ),
        other => panic!("status {other}: {}", response.text()),
    }

    garage.start_node(1);
    garage.start_node(2);
    process::wait_for(
        "the cluster to serve again",
        Duration::from_secs(60),
        || {
            let response = http::get(&gateway.addr, &path, &[("Range", "bytes=1-100")]);
            response.status == 206 && response.body == plaintext[1..=100]
        },
    );
    assert_ranges_exact(&grid, &data, &cap, &plaintext, 128 << 10);
}

/// Shares deleted from two buckets and overwritten in a third are rebuilt from the others:
/// the lost ones back where they were, the corrupt one in another bucket (buckets are never
/// overwritten), and the file reads exactly from the rebuilt shares.
#[test]
fn repair_rebuilds_shares_lost_or_corrupted_in_buckets() {
    let Some(buckets) = Buckets::start(6) else {
        return;
    };
    let data = buckets.data();
    let plaintext = random_bytes(500_000, 17);
    let (grid, cap) = buckets.put(&plaintext, 2);
    let read_cap: ReadCap = cap.parse().unwrap();
    let si = read_cap.storage_index();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key_of = |i: usize| {
        let store = buckets.store(i);
        let share = runtime.block_on(store.list(si)).unwrap()[0];
        object_store::path::Path::from(store.key(&si, share))
    };
    for i in 0..2 {
        let path = key_of(i);
        runtime.block_on(buckets.client(i).delete(&path)).unwrap();
    }
    let path = key_of(2);
    runtime.block_on(async {
        let client = buckets.client(2);
        let mut bytes = client
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x08;
        client.put(&path, bytes.into()).await.unwrap();
    });
    let segvault = || {
        let mut command = process::segvault();
        command.arg("--data").arg(&data).arg("--grid").arg(&grid);
        command
    };
    let output = process::run(segvault().args(["repair", &cap]));
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.starts_with("repaired"), "{report}");
    assert!(report.contains("corrupt "), "{report}");
    for i in 0..2 {
        assert!(
            report.contains(&format!("on s3://bucket-{i}/segvault")),
            "a lost share goes back to bucket {i}: {report}"
        );
    }
    // Only rebuilt shares and one original left of the six: exact.
    for i in 3..6 {
        let path = key_of(i);
        let stays = runtime.block_on(buckets.store(i).list(si)).unwrap().len() > 1;
        if !stays {
            runtime.block_on(buckets.client(i).delete(&path)).unwrap();
        }
    }
    let output = get_range(&grid, &data, &cap, None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == plaintext, "exact from rebuilt shares");
}
