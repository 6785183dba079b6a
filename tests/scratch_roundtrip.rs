use segvault::{Client, Grid, PutOptions, PutSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::embedded(dir.path(), 10).unwrap();
    for (size, seg, k, n) in [(0usize, 64u64, 3u16, 10u16), (1, 64, 3, 10), (1000, 64, 3, 10), (100_000, 1000, 5, 7), (5000, 77, 1, 1), (777, 10, 2, 2)] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 256) as u8).collect();
        let opts = PutOptions { k, n, segment_size: Some(seg), ..Default::default() };
        let cap = segvault::put(&grid, PutSource::Bytes(data.clone()), &opts).await.unwrap();
        let client = Client::new(grid.clone(), Default::default());
        let file = client.open(&cap).await.unwrap();
        assert_eq!(file.len(), size as u64);
        let all = file.read(0, size as u64 + 10).await.unwrap();
        assert_eq!(&all[..], &data[..], "size {size}");
        for off in [0, 1, seg as usize - 1, seg as usize, seg as usize + 1, size / 2, size.saturating_sub(1)] {
            for len in [0usize, 1, 5, seg as usize, 3 * seg as usize + 7] {
                let got = file.read(off as u64, len as u64).await.unwrap();
                let end = (off + len).min(size);
                let start = off.min(size);
                assert_eq!(&got[..], &data[start..end.max(start)], "size {size} off {off} len {len}");
            }
        }
    }
}
