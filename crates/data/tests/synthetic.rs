//! The synthetic data set: deterministic, the announced shape, balanced, and learnable (class
//! means are far apart compared with the spread inside a class).

use timeprest_data::{LoadOptions, SYNTHETIC_CLASSES, SYNTHETIC_SHAPE, load};

#[test]
fn synthetic_is_deterministic_shaped_and_separable() {
    let a = load("synthetic", &LoadOptions::default()).unwrap();
    let b = load("synthetic", &LoadOptions::default()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.train.shape, SYNTHETIC_SHAPE);
    assert_eq!(a.train.num_classes, SYNTHETIC_CLASSES);
    assert!(a.train.class_counts().iter().all(|&n| n > 100));
    // Nearest class mean (from the training set) classifies most test samples.
    let f = a.train.num_features;
    let mut means = vec![vec![0.0f64; f]; SYNTHETIC_CLASSES];
    let counts = a.train.class_counts();
    for i in 0..a.train.len() {
        let (x, labels) = a.train.sample(i);
        let y = labels[0];
        for (m, &v) in means[y as usize].iter_mut().zip(x) {
            *m += f64::from(v) / counts[y as usize] as f64;
        }
    }
    let correct = (0..a.test.len())
        .filter(|&i| {
            let (x, labels) = a.test.sample(i);
            let y = labels[0];
            let dist = |m: &Vec<f64>| -> f64 {
                m.iter()
                    .zip(x)
                    .map(|(m, &v)| (m - f64::from(v)).powi(2))
                    .sum()
            };
            let best = (0..SYNTHETIC_CLASSES)
                .min_by(|&p, &q| dist(&means[p]).total_cmp(&dist(&means[q])))
                .unwrap();
            best == y as usize
        })
        .count();
    assert!(
        correct * 10 > a.test.len() * 7,
        "{correct}/{}",
        a.test.len()
    );
}
