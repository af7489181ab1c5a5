//! MNIST as CSV: a directory of train/test files, one file split 80/20, headers, `.gz`, and
//! each malformed case.

use std::fs;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use timeprest_data::{DataError, LoadOptions, load, load_mnist_csv};

/// `count` rows: label `i % 10`, pixels `(i + j) % 256`.
fn rows(count: usize, header: bool) -> String {
    let mut out = String::new();
    if header {
        let names: Vec<String> = (0..784).map(|j| format!("px{j}")).collect();
        out += &format!("label,{}\n", names.join(","));
    }
    for i in 0..count {
        let pixels: Vec<String> = (0..784).map(|j| ((i + j) % 256).to_string()).collect();
        out += &format!("{},{}\n", i % 10, pixels.join(","));
    }
    out
}

#[test]
fn a_directory_and_a_single_gz_file_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("mnist_train.csv"), rows(7, true)).unwrap();
    fs::write(dir.join("mnist_test.csv"), rows(3, false)).unwrap();
    let split = load("mnist-csv", &LoadOptions::in_dir(Some(dir))).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (7, 3));
    assert_eq!(split.train.shape, [1, 28, 28]);
    let (x, y) = split.train.sample(5);
    assert_eq!(y, [5]);
    assert_eq!(x[10], 15.0 / 255.0);

    let file = dir.join("mnist_5k.csv.gz");
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(rows(50, false).as_bytes()).unwrap();
    fs::write(&file, enc.finish().unwrap()).unwrap();
    let split = load_mnist_csv(Some(&file)).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (40, 10));
    // The split is a fixed partition of the rows.
    let mut labels: Vec<u32> = split
        .train
        .labels
        .iter()
        .chain(&split.test.labels)
        .copied()
        .collect();
    labels.sort_unstable();
    assert_eq!(labels, {
        let mut l: Vec<u32> = (0..50).map(|i| i % 10).collect();
        l.sort_unstable();
        l
    });
}

#[test]
fn malformed_rows_are_errors_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.csv");
    let good = rows(2, false);
    let cases = [
        (good.replacen(",0,", ",256,", 1), "line 1", "pixel"),
        (format!("{good}3,1,2\n"), "line 3", "fields"),
        (good.replacen("\n1,", "\nx,", 1), "line 2", "label"),
    ];
    for (text, line, what) in cases {
        fs::write(&file, text).unwrap();
        let err = load_mnist_csv(Some(&file)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::BadCsv { .. }), "{msg}");
        assert!(
            msg.contains("bad.csv") && msg.contains(line) && msg.contains(what),
            "{msg}"
        );
    }
    fs::write(&file, good.replacen("\n1,", "\n12,", 1)).unwrap();
    let err = load_mnist_csv(Some(&file)).unwrap_err();
    assert!(
        matches!(err, DataError::LabelOutOfRange { label: 12, .. }),
        "{err}"
    );
    fs::write(&file, "").unwrap();
    let err = load_mnist_csv(Some(&file)).unwrap_err();
    assert!(
        matches!(err, DataError::Malformed { offset: 0, .. }),
        "{err}"
    );
    fs::write(&file, [0xff, 0xfe, b'1']).unwrap();
    let err = load_mnist_csv(Some(&file)).unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
    let err = load_mnist_csv(Some(&tmp.path().join("absent.csv"))).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    // A directory without the two files.
    let err = load_mnist_csv(Some(tmp.path())).unwrap_err();
    assert!(err.to_string().contains("mnist_train.csv"), "{err}");
}
