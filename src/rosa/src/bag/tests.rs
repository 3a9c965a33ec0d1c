use super::*;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rosa-bag-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn topic(name: &str, latched: bool) -> TopicInfo {
    let mut q = Qos::reliable_volatile(10);
    if latched {
        q.durability = "transient_local".into();
    }
    TopicInfo {
        name: name.into(),
        type_name: "std_msgs/msg/String".into(),
        schema: "string data\n".into(),
        type_hash: "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18".into(),
        offered_qos: vec![q],
    }
}

/// CDR of a std_msgs/String.
fn string_cdr(s: &str) -> Vec<u8> {
    let mut v = vec![0, 1, 0, 0];
    v.extend_from_slice(&((s.len() + 1) as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

#[test]
fn writes_a_bag_and_reads_every_message_back() {
    let dir = tmp("rw");
    for compression in [Compression::None, Compression::Zstd, Compression::Lz4] {
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = BagWriter::create(&dir, WriterOptions { chunk_size: 4096, compression, ..Default::default() }).unwrap();
        let a = w.add_topic(topic("/a", false)).unwrap();
        let b = w.add_topic(topic("/rosa/processes", true)).unwrap();
        for i in 0..500u64 {
            w.write(if i % 3 == 0 { b } else { a }, 1_000 + i, 900 + i, &string_cdr(&format!("m{i}"))).unwrap();
        }
        let m = w.finish().unwrap();
        assert_eq!(m.message_count, 500);
        assert_eq!(m.topics_with_message_count.iter().map(|t| t.message_count).collect::<Vec<_>>(), vec![333, 167]);
        let bag = Bag::open(&dir).unwrap();
        assert_eq!(bag.files.len(), 1);
        let msgs: Vec<BagMessage> = bag.messages().collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 500);
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.data, string_cdr(&format!("m{i}")));
            assert_eq!(m.log_time, 1_000 + i as u64);
            assert_eq!(m.publish_time, 900 + i as u64);
            assert_eq!(&*m.type_name, "std_msgs/msg/String");
        }
        let topics = bag.topics().unwrap();
        assert!(topics[1].offered_qos[0].is_transient_local());
        let text = describe(&bag).unwrap();
        assert!(text.contains("Messages:          500"), "{text}");
        assert!(text.contains("Topic: /rosa/processes | Type: std_msgs/msg/String | Count: 167 | Serialization Format: cdr"), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn splits_by_size_and_duration() {
    let dir = tmp("split");
    let mut w = BagWriter::create(&dir, WriterOptions { max_file_size: 10_000, ..Default::default() }).unwrap();
    let a = w.add_topic(topic("/a", false)).unwrap();
    for i in 0..100u64 {
        w.write(a, i, i, &vec![7u8; 1000]).unwrap();
    }
    let m = w.finish().unwrap();
    assert!(m.files.len() >= 9, "{} files", m.files.len());
    assert_eq!(m.files.iter().map(|f| f.message_count).sum::<u64>(), 100);
    assert_eq!(m.relative_file_paths[1], format!("{}_1.mcap", dir.file_name().unwrap().to_string_lossy()));
    let n = Bag::open(&dir).unwrap().messages().filter(|m| m.is_ok()).count();
    assert_eq!(n, 100);

    let _ = std::fs::remove_dir_all(&dir);
    let mut w = BagWriter::create(&dir, WriterOptions { max_file_duration_ns: 1_000, ..Default::default() }).unwrap();
    let a = w.add_topic(topic("/a", false)).unwrap();
    for i in 0..10u64 {
        w.write(a, i * 500, 0, b"\0\x01\0\0").unwrap();
    }
    assert_eq!(w.finish().unwrap().files.len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bag_cut_short_is_repaired_up_to_its_last_flush() {
    let dir = tmp("cut");
    let mut w = BagWriter::create(&dir, WriterOptions { chunk_size: 1 << 20, ..Default::default() }).unwrap();
    let a = w.add_topic(topic("/a", false)).unwrap();
    for i in 0..300u64 {
        w.write(a, i, i, &string_cdr(&i.to_string())).unwrap();
    }
    w.flush().unwrap();
    for i in 300..350u64 {
        w.write(a, i, i, &string_cdr(&i.to_string())).unwrap();
    }
    // What is on disk now is what a SIGKILL leaves (the writer's buffer is not flushed).
    let file = dir.join(format!("{}_0.mcap", dir.file_name().unwrap().to_string_lossy()));
    let on_disk = std::fs::read(&file).unwrap();
    let copy = tmp("cut-copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(dir.join("metadata.yaml"), copy.join("metadata.yaml")).unwrap();
    let name = file.file_name().unwrap();
    std::fs::write(copy.join(name), &on_disk).unwrap();
    drop(w);

    let bag = Bag::open(&copy).unwrap();
    let results: Vec<_> = bag.messages().collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 300, "the reader yields the flushed messages");
    assert!(matches!(results.last(), Some(Err(BagError::Truncated { messages: 300, .. }))));

    let report = repair(&copy).unwrap();
    assert_eq!(report.messages, 300);
    assert_eq!(report.repaired.len(), 1);
    let bag = Bag::open(&copy).unwrap();
    assert_eq!(bag.metadata.as_ref().unwrap().message_count, 300);
    let msgs: Vec<BagMessage> = bag.messages().collect::<Result<_, _>>().expect("a whole file after repair");
    assert_eq!(msgs.len(), 300);
    assert_eq!(msgs[299].data, string_cdr("299"));
    assert!(bag.topics().unwrap()[0].offered_qos[0] == Qos::reliable_volatile(10));
    // Repairing a whole bag changes nothing.
    assert!(repair(&copy).unwrap().repaired.is_empty());

    // Cut anywhere: never a panic, never more than what was written.
    for cut in (0..on_disk.len()).step_by(97) {
        std::fs::write(copy.join(name), &on_disk[..cut]).unwrap();
        let n = Bag::open(&copy).map(|b| b.messages().filter(|m| m.is_ok()).count()).unwrap_or(0);
        assert!(n <= 300);
        let _ = repair(&copy);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
}

#[test]
fn clear_errors_for_unusable_directories() {
    let dir = tmp("busy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("x"), b"x").unwrap();
    let e = BagWriter::create(&dir, WriterOptions::default()).err().unwrap();
    assert!(e.to_string().contains("not empty"), "{e}");
    let e = BagWriter::create(std::path::Path::new("/proc/rosa-bag"), WriterOptions::default()).err().unwrap();
    assert!(matches!(e, BagError::Io { .. }), "{e}");
    assert!(Bag::open(&dir).is_err());
    assert!(Bag::open(std::path::Path::new("/nonexistent/bag")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!("zstd".parse::<Compression>().is_ok() && "gzip".parse::<Compression>().is_err());
}

#[test]
fn topic_selection() {
    let s = TopicSelector { all: false, include: DEFAULT_TOPICS.iter().map(|s| s.to_string()).collect(), exclude: vec!["/rosa/stt/*".into()] };
    assert!(s.selects("/rosa/processes") && s.selects("/tf") && s.selects("/rosout"));
    assert!(!s.selects("/rosa/stt/transcript") && !s.selects("/tf2") && !s.selects("/chatter"));
    let all = TopicSelector { all: true, include: vec![], exclude: vec!["*secret*".into()] };
    assert!(all.selects("/x") && !all.selects("/r1/secret/y"));
    assert!(glob_match("/a/*/c", "/a/b/x/c") && glob_match("?b", "ab") && !glob_match("a*b", "ac") && glob_match("*", ""));
}
