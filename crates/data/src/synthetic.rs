//! `synthetic`: a seeded, learnable image data set that needs no file.
//!
//! Tests and demos of the convolutional models need 3×32×32 images (VGG's five poolings need
//! 32×32), and no CIFAR copy can be downloaded here. Each of the 10 classes gets a random
//! smooth template (a sum of a few seeded sinusoids per channel); a sample is its class's
//! template, randomly shifted by up to 2 pixels, plus uniform noise. The result is roughly
//! zero-mean with unit spread, like normalised CIFAR, and a small network separates it within
//! an epoch or two. Everything derives from [`SYNTHETIC_SEED`], so every run and machine sees
//! the same samples.

use crate::{DataError, DataSplit, Dataset, SplitMix64};

/// Seed of the synthetic data set (fixed: not a training seed).
pub const SYNTHETIC_SEED: u64 = 0x5EED_DA7A;
/// Training samples.
pub const SYNTHETIC_TRAIN: usize = 2048;
/// Test samples.
pub const SYNTHETIC_TEST: usize = 512;
/// Sample shape.
pub const SYNTHETIC_SHAPE: [usize; 3] = [3, 32, 32];
/// Classes.
pub const SYNTHETIC_CLASSES: usize = 10;

/// A class template: per channel, the wave `(fx, fy, phase)`.
type Template = [[f32; 3]; 3];

/// One random template per class.
fn templates(rng: &mut SplitMix64) -> Vec<Template> {
    (0..SYNTHETIC_CLASSES)
        .map(|_| {
            std::array::from_fn(|_| {
                let (fx, fy) = (0.5 + 3.0 * rng.next_f32(), 0.5 + 3.0 * rng.next_f32());
                [fx, fy, std::f32::consts::TAU * rng.next_f32()]
            })
        })
        .collect()
}

/// `count` samples named `name`, drawn from `rng`.
fn samples(
    rng: &mut SplitMix64,
    waves: &[Template],
    count: usize,
    name: &str,
) -> Result<Dataset, DataError> {
    let [c, h, w] = SYNTHETIC_SHAPE;
    let mut features = Vec::with_capacity(count * c * h * w);
    let mut labels = Vec::with_capacity(count);
    for _ in 0..count {
        let label = rng.below(SYNTHETIC_CLASSES as u64) as usize;
        let (dx, dy) = (rng.below(5) as f32 - 2.0, rng.below(5) as f32 - 2.0);
        let t = &waves[label];
        for &[fx, fy, phase] in &t[..c] {
            for y in 0..h {
                for x in 0..w {
                    let (u, v) = ((x as f32 + dx) / w as f32, (y as f32 + dy) / h as f32);
                    let signal = (std::f32::consts::TAU * (fx * u + fy * v) + phase).sin();
                    features.push(signal + (rng.next_f32() - 0.5));
                }
            }
        }
        labels.push(label as u32);
    }
    Dataset::new(name, SYNTHETIC_SHAPE, SYNTHETIC_CLASSES, features, labels)
}

/// The synthetic data set: [`SYNTHETIC_TRAIN`] + [`SYNTHETIC_TEST`] samples of shape
/// [`SYNTHETIC_SHAPE`], [`SYNTHETIC_CLASSES`] classes.
///
/// # Errors
/// None in practice (the parts always fit together); the type is that of every loader.
pub fn load_synthetic() -> Result<DataSplit, DataError> {
    let mut rng = SplitMix64::new(SYNTHETIC_SEED);
    let waves = templates(&mut rng);
    Ok(DataSplit {
        train: samples(&mut rng, &waves, SYNTHETIC_TRAIN, "synthetic/train")?,
        test: samples(&mut rng, &waves, SYNTHETIC_TEST, "synthetic/test")?,
    })
}
