//! CIFAR binary readers: round trips through files generated in the official format, the
//! archive layouts, and one test per malformed case.

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use timeprest_data::cifar::{CIFAR_PIXELS, CIFAR10_MEAN, CIFAR10_STD, CifarKind, load_cifar};
use timeprest_data::{DataError, LoadOptions, load};

/// `count` records of `kind`; record i has labels (i % 10, i % 7 …) and pixels `(i + j) % 256`.
fn records(kind: CifarKind, count: usize, first: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in first..first + count {
        match kind {
            CifarKind::Cifar10 => out.push((i % 10) as u8),
            _ => out.extend([(i % 20) as u8, (i % 100) as u8]),
        }
        out.extend((0..CIFAR_PIXELS).map(|j| ((i + j) % 256) as u8));
    }
    out
}

fn write_cifar10(dir: &Path, per_batch: usize, gz_test: bool) {
    for b in 1..=5 {
        let bytes = records(CifarKind::Cifar10, per_batch, (b - 1) * per_batch);
        fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    let test = records(CifarKind::Cifar10, 3, 1000);
    if gz_test {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&test).unwrap();
        fs::write(dir.join("test_batch.bin.gz"), enc.finish().unwrap()).unwrap();
    } else {
        fs::write(dir.join("test_batch.bin"), test).unwrap();
    }
}

#[test]
fn cifar10_round_trips_with_per_channel_normalisation() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10(tmp.path(), 4, true);
    let split = load("cifar10", &LoadOptions::in_dir(Some(tmp.path()))).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (20, 3));
    assert_eq!(split.train.shape, [3, 32, 32]);
    assert_eq!(split.train.num_classes, 10);
    // Batches are concatenated in order: sample 13 is record 1 of data_batch_4.
    let (x, y) = split.train.sample(13);
    assert_eq!(y, [3]);
    for (j, c) in [(0, 0), (1500, 1), (3071, 2)] {
        let raw = ((13 + j) % 256) as f32 / 255.0;
        let expect = (raw - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
        assert!((x[j] - expect).abs() < 1e-6, "pixel {j}");
    }
    assert_eq!(split.test.sample(2).1, [(1002 % 10) as u32]);
}

#[test]
fn cifar100_reads_fine_or_coarse_labels_from_the_archive_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("cifar-100-binary");
    fs::create_dir(&inner).unwrap();
    fs::write(
        inner.join("train.bin"),
        records(CifarKind::Cifar100Fine, 30, 0),
    )
    .unwrap();
    fs::write(
        inner.join("test.bin"),
        records(CifarKind::Cifar100Fine, 2, 50),
    )
    .unwrap();
    let fine = load("cifar100", &LoadOptions::in_dir(Some(tmp.path()))).unwrap();
    let coarse = load("cifar100-coarse", &LoadOptions::in_dir(Some(tmp.path()))).unwrap();
    assert_eq!(
        (fine.train.num_classes, coarse.train.num_classes),
        (100, 20)
    );
    assert_eq!(fine.train.sample(27).1, [27]);
    assert_eq!(coarse.train.sample(27).1, [7]);
    assert_eq!(fine.test.sample(1).1, [51]);
    assert_eq!(fine.train.sample(27).0, coarse.train.sample(27).0);
}

#[test]
fn malformed_cifar_files_are_errors_naming_file_offset_and_problem() {
    let kind = CifarKind::Cifar10;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Missing file, with advice.
    let err = load_cifar(dir, kind, "; get it").unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("data_batch_1.bin") && err.to_string().contains("get it"));
    let msg = load("cifar10", &LoadOptions::in_dir(Some(dir)))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cifar.html"), "{msg}");

    write_cifar10(dir, 2, false);
    // Truncated record: 2 whole records then 100 bytes.
    let mut bytes = records(kind, 3, 0);
    bytes.truncate(2 * kind.record_len() + 100);
    fs::write(dir.join("data_batch_3.bin"), &bytes).unwrap();
    let err = load("cifar10", &LoadOptions::in_dir(Some(dir))).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                offset: 6146,
                actual: 100,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains("offset 6146"),
        "{msg}"
    );

    // Label out of range in the second record.
    let mut bytes = records(kind, 2, 0);
    bytes[kind.record_len()] = 10;
    fs::write(dir.join("data_batch_3.bin"), &bytes).unwrap();
    let err = load("cifar10", &LoadOptions::in_dir(Some(dir))).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, DataError::Malformed { offset: 3073, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains("label 10"),
        "{msg}"
    );

    // Fine label out of range in CIFAR-100 (offset of the second label byte).
    let mut bytes = records(CifarKind::Cifar100Fine, 1, 0);
    bytes[1] = 100;
    fs::write(dir.join("train.bin"), &bytes).unwrap();
    fs::write(dir.join("test.bin"), records(CifarKind::Cifar100Fine, 1, 0)).unwrap();
    let err = load("cifar100", &LoadOptions::in_dir(Some(dir))).unwrap_err();
    assert!(
        matches!(err, DataError::Malformed { offset: 1, .. }),
        "{err}"
    );
    assert!(load("cifar100-coarse", &LoadOptions::in_dir(Some(dir))).is_ok());

    // Empty file.
    fs::write(dir.join("data_batch_3.bin"), b"").unwrap();
    let err = load("cifar10", &LoadOptions::in_dir(Some(dir))).unwrap_err();
    assert!(
        matches!(err, DataError::Malformed { offset: 0, .. }) && err.to_string().contains("empty"),
        "{err}"
    );

    // Corrupt gzip.
    write_cifar10(dir, 2, false);
    fs::remove_file(dir.join("test_batch.bin")).unwrap();
    fs::write(dir.join("test_batch.bin.gz"), b"\x1f\x8bnot really").unwrap();
    let err = load("cifar10", &LoadOptions::in_dir(Some(dir))).unwrap_err();
    assert!(matches!(err, DataError::BadGzip { .. }), "{err}");
}
