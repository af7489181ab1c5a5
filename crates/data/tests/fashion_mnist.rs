//! The real Fashion-MNIST files, as installed by Debian's `dataset-fashion-mnist`.
//!
//! Skipped (with a note) where the package is not installed.

use std::path::Path;

use timeprest_data::{FASHION_MNIST_DEFAULT_DIR, LoadOptions, load};

#[test]
fn real_fashion_mnist_loads_60000_and_10000() {
    if !Path::new(FASHION_MNIST_DEFAULT_DIR).is_dir() {
        eprintln!(
            "note: skipping, {FASHION_MNIST_DEFAULT_DIR} is missing \
             (apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    let split = load("fashion-mnist", &LoadOptions::default()).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (60_000, 10_000));
    for (part, per_class) in [(&split.train, 6000), (&split.test, 1000)] {
        assert_eq!(part.num_features, 784);
        assert_eq!(part.shape, [1, 28, 28]);
        assert_eq!(part.features.len(), part.len() * 784);
        assert_eq!(part.class_counts(), vec![per_class; 10]);
        assert!(part.features.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // Label of the first training image in the published files ("ankle boot").
    assert_eq!(split.train.labels[0], 9);
}
