//! The embedded digits data set and the [`load`] entry point.

use timeprest_data::{DATASET_NAMES, DataError, LoadOptions, load};

#[test]
fn digits_loads_1797_samples_with_64_features() {
    let split = load("digits", &LoadOptions::default()).unwrap();
    assert_eq!(split.train.len() + split.test.len(), 1797);
    assert_eq!((split.train.len(), split.test.len()), (1438, 359));
    for part in [&split.train, &split.test] {
        assert_eq!(part.num_features, 64);
        assert_eq!(part.shape, [1, 8, 8]);
        assert_eq!(part.num_classes, 10);
        assert_eq!(part.features.len(), part.len() * 64);
        assert!(part.features.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // 16 (the maximum) occurs, so normalisation reaches exactly 1.
    assert!(split.train.features.contains(&1.0));
    assert_eq!(split.train.name, "digits/train");
    assert_eq!(split.test.name, "digits/test");
}

#[test]
fn digits_labels_in_range_and_classes_balanced() {
    let split = load("digits", &LoadOptions::default()).unwrap();
    let (train, test) = (split.train.class_counts(), split.test.class_counts());
    assert!(
        split
            .train
            .labels
            .iter()
            .chain(&split.test.labels)
            .all(|&l| l < 10)
    );
    let total: Vec<usize> = train.iter().zip(&test).map(|(a, b)| a + b).collect();
    // The file holds 174..=183 samples per class.
    assert!(total.iter().all(|&c| (174..=183).contains(&c)), "{total:?}");
    // A random 20% test split keeps roughly 36 per class.
    assert!(test.iter().all(|&c| (20..=55).contains(&c)), "{test:?}");
}

#[test]
fn digits_split_is_fixed_and_ignores_data_dir() {
    let a = load("digits", &LoadOptions::default()).unwrap();
    let b = load(
        "digits",
        &LoadOptions::in_dir(Some(std::path::Path::new("/nonexistent"))),
    )
    .unwrap();
    assert_eq!(a, b);
    // The first sample of the file (a 0) is in the training part.
    assert_eq!(a.train.sample(0).1, [0]);
}

#[test]
fn unknown_name_lists_valid_names() {
    let err = load("cifar", &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::UnknownDataset { .. }));
    let msg = err.to_string();
    assert!(msg.contains("cifar"), "{msg}");
    for name in DATASET_NAMES {
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn limit_truncates_both_parts() {
    let split = load("digits", &LoadOptions::default())
        .unwrap()
        .limit(Some(100), Some(10));
    assert_eq!((split.train.len(), split.test.len()), (100, 10));
    assert_eq!(split.train.features.len(), 6400);
    let (x, y) = split.test.gather(&[9, 0]);
    assert_eq!((x.len(), y.len()), (128, 2));
}
