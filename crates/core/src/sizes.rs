//! `size`: presets relative to the model's native resolution, or an explicit `WxH`.
//!
//! Seedream lets a preset's aspect ratio follow the prompt ("a 16:9 poster"); we do the same:
//! the first `W:H` ratio in the prompt shapes the preset's pixel budget. Without one, presets
//! are square (as upstream's 1:1 default).

use std::sync::LazyLock;

use regex::Regex;

use crate::error::{CoreError, Result};

/// Width and height: the size delivered, and the multiple-of-the-latent-factor size the
/// model computes (the picture is resized to the delivered size when they differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedSize {
    pub width: u32,
    pub height: u32,
    pub compute_width: u32,
    pub compute_height: u32,
}

/// What bounds one model's sizes.
#[derive(Debug, Clone, Copy)]
pub struct SizeRules<'a> {
    /// The model's name as the client asked for it, for error messages.
    pub model: &'a str,
    pub native: u32,
    pub factor: u32,
    /// The longest side the model computes, at most [`MAX_SIDE`].
    pub max_side: u32,
}

impl SizeRules<'_> {
    /// Half the native side squared: below it SD models produce noise.
    pub fn min_pixels(self) -> u64 {
        let side = u64::from(self.native / 2);
        side * side
    }

    /// The `4K` preset's budget, or the largest square the model computes when smaller.
    pub fn max_pixels(self) -> u64 {
        let side = u64::from((self.native * 4).min(self.longest()));
        side * side
    }

    fn longest(self) -> u32 {
        self.max_side.min(MAX_SIDE)
    }

    /// The sizes this model takes, in words and examples, for the error about one it does
    /// not: its smallest and largest squares, then its native square, a 3:5 portrait of the
    /// same pixels and the largest square as sizes to send.
    fn takes(self) -> String {
        let smallest = self.native / 2;
        let largest = (self.native * 4).min(self.longest());
        let portrait = |w: f64, h: f64| {
            let side = f64::from(self.native);
            let scale = (w / h).sqrt();
            (
                align(side * scale, self.factor),
                align(side / scale, self.factor),
            )
        };
        let (pw, ph) = portrait(3.0, 5.0);
        format!(
            "{model} takes {smallest}x{smallest} to {largest}x{largest} pixels' worth in any shape \
             from 1:16 to 16:1 with sides up to {longest} px, e.g. {n}x{n}, {pw}x{ph} or \
             {largest}x{largest}",
            model = self.model,
            n = self.native,
            longest = self.longest(),
        )
    }

    fn refuse(self, width: u32, height: u32, what: &str) -> CoreError {
        CoreError::invalid(
            "size",
            format!("size {width}x{height} is {what}: {}.", self.takes()),
        )
    }
}

const MAX_RATIO: f64 = 16.0;
/// The longest side the engine computes; larger sizes are refused at admission rather than
/// failing in the queue.
pub const MAX_SIDE: u32 = seedbed_engine::pipeline::MAX_SIDE;
/// Preset outputs have both sides divisible by 16, as upstream's do.
const PRESET_ALIGN: u32 = 16;

static RATIO: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:^|[^\d.])(\d{1,2})\s*[:：]\s*(\d{1,2})(?:$|[^\d.])").unwrap());
static EXPLICIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(\d{1,6})x(\d{1,6})$").unwrap());

/// Resolve the request's `size` (absent = `1K`, the native square).
pub fn resolve(size: Option<&str>, prompt: &str, rules: SizeRules) -> Result<ResolvedSize> {
    let size = size.map(str::trim).unwrap_or("1K");
    let multiplier = match size {
        "1K" => Some(1.0),
        "1.5K" => Some(1.5),
        "2K" => Some(2.0),
        "3K" => Some(3.0),
        "4K" => Some(4.0),
        // SeedEdit's `adaptive`: for our models the native resolution.
        "adaptive" => Some(1.0),
        _ => None,
    };
    if let Some(multiplier) = multiplier {
        let side = f64::from(rules.native) * multiplier;
        let ratio = prompt_ratio(prompt).unwrap_or(1.0);
        // A wide ratio at a large preset would put one side past what the engine computes:
        // keep the ratio and shrink the budget until the longer side fits.
        let longer = side * ratio.sqrt().max(1.0 / ratio.sqrt());
        let longest = rules.longest();
        let side = side * (f64::from(longest) / longer).min(1.0);
        let step = PRESET_ALIGN.max(rules.factor);
        let (width, height) = fit_budget(
            (side * ratio.sqrt(), side / ratio.sqrt()),
            step,
            longest,
            rules.max_pixels(),
        );
        return Ok(ResolvedSize {
            width,
            height,
            compute_width: width,
            compute_height: height,
        });
    }
    let Some(captures) = EXPLICIT.captures(size) else {
        return Err(CoreError::invalid(
            "size",
            format!(
                "size `{size}` is neither a preset (1K, 2K, 4K) nor WIDTHxHEIGHT such as {0}x{0}.",
                rules.native
            ),
        ));
    };
    let width: u32 = captures[1].parse().unwrap_or(0);
    let height: u32 = captures[2].parse().unwrap_or(0);
    let pixels = u64::from(width) * u64::from(height);
    if pixels < rules.min_pixels() {
        return Err(rules.refuse(width, height, "too small"));
    }
    if pixels > rules.max_pixels() {
        return Err(rules.refuse(width, height, "too large"));
    }
    if width.max(height) > rules.longest() {
        return Err(rules.refuse(width, height, "too long on one side"));
    }
    let ratio = f64::from(width) / f64::from(height);
    if !(1.0 / MAX_RATIO..=MAX_RATIO).contains(&ratio) {
        return Err(rules.refuse(width, height, "too narrow"));
    }
    Ok(ResolvedSize {
        width,
        height,
        compute_width: align(f64::from(width), rules.factor),
        compute_height: align(f64::from(height), rules.factor),
    })
}

/// Aspect ratios people name in prompts; anything else (a time like 10:30) is not one.
const COMMON_RATIOS: [(u32, u32); 19] = [
    (1, 1),
    (2, 1),
    (1, 2),
    (3, 2),
    (2, 3),
    (4, 3),
    (3, 4),
    (5, 4),
    (4, 5),
    (7, 5),
    (5, 7),
    (16, 9),
    (9, 16),
    (16, 10),
    (10, 16),
    (21, 9),
    (9, 21),
    (3, 1),
    (1, 3),
];

/// The first common `W:H` in the prompt, as width / height.
fn prompt_ratio(prompt: &str) -> Option<f64> {
    RATIO.captures_iter(prompt).find_map(|c| {
        let pair = (c[1].parse().ok()?, c[2].parse().ok()?);
        COMMON_RATIOS
            .contains(&pair)
            .then(|| f64::from(pair.0) / f64::from(pair.1))
    })
}

/// Nearest positive multiple of `step`.
fn align(value: f64, step: u32) -> u32 {
    let steps = (value / f64::from(step)).round().max(1.0);
    steps as u32 * step
}

/// The ideal `(width, height)` aligned to `step`, each at most `longest`, to the nearest
/// multiples unless that puts the area over `budget` (the `4K` preset of a small model
/// rounds 313x209 up to 320x208): then the side rounded up the most is rounded down
/// instead, then the other. A preset's answer is always a size the client may send back.
fn fit_budget(ideal: (f64, f64), step: u32, longest: u32, budget: u64) -> (u32, u32) {
    let near = |v: f64| align_within(v, step, longest);
    let down = |v: f64| (((v / f64::from(step)).floor().max(1.0)) as u32 * step).min(near(v));
    let area = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
    let mut size = (near(ideal.0), near(ideal.1));
    let up = |aligned: u32, v: f64| f64::from(aligned) - v;
    let width_first = up(size.0, ideal.0) >= up(size.1, ideal.1);
    for width_turn in [width_first, !width_first] {
        if area(size) <= budget {
            break;
        }
        if width_turn {
            size.0 = down(ideal.0);
        } else {
            size.1 = down(ideal.1);
        }
    }
    size
}

/// Nearest positive multiple of `step`, at most `max` (itself a multiple of `step`).
fn align_within(value: f64, step: u32, max: u32) -> u32 {
    align(value, step).min(max - max % step)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDXL: SizeRules = SizeRules {
        model: "sdxl",
        native: 1024,
        factor: 8,
        max_side: MAX_SIDE,
    };

    fn wh(size: Option<&str>, prompt: &str) -> (u32, u32) {
        let r = resolve(size, prompt, SDXL).unwrap();
        (r.width, r.height)
    }

    #[test]
    fn presets_are_relative_to_the_native_size() {
        assert_eq!(wh(None, "a fox"), (1024, 1024));
        assert_eq!(wh(Some("1K"), "a fox"), (1024, 1024));
        assert_eq!(wh(Some("2K"), "a fox"), (2048, 2048));
        assert_eq!(wh(Some("4K"), "a fox"), (4096, 4096));
        let sd15 = SizeRules {
            model: "sd15",
            native: 512,
            factor: 8,
            max_side: MAX_SIDE,
        };
        assert_eq!(resolve(Some("1K"), "x", sd15).unwrap().width, 512);
    }

    #[test]
    fn a_ratio_in_the_prompt_shapes_the_preset() {
        let (w, h) = wh(Some("2K"), "a wide 16:9 poster of a harbour");
        assert_eq!((w % 16, h % 16), (0, 0));
        assert!(
            (f64::from(w) / f64::from(h) - 16.0 / 9.0).abs() < 0.02,
            "{w}x{h}"
        );
        let pixels = f64::from(w) * f64::from(h);
        assert!((pixels / (2048.0 * 2048.0) - 1.0).abs() < 0.02, "{w}x{h}");
        assert_eq!(wh(Some("1K"), "portrait, 3:4"), (880, 1184));
        // Times and version numbers are not ratios.
        assert_eq!(wh(Some("1K"), "at 10:30, v1.5:2"), (1024, 1024));
    }

    fn within_bounds(size: Option<&str>, prompt: &str, rules: SizeRules) {
        match resolve(size, prompt, rules) {
            Ok(r) => {
                let pixels = u64::from(r.width) * u64::from(r.height);
                assert!(r.width.max(r.height) <= MAX_SIDE, "{size:?}: {r:?}");
                assert!(r.compute_width.max(r.compute_height) <= MAX_SIDE, "{r:?}");
                assert!(pixels <= rules.max_pixels(), "{size:?}: {r:?}");
                assert!(r.width > 0 && r.height > 0, "{r:?}");
                assert_eq!(
                    (
                        r.compute_width % rules.factor,
                        r.compute_height % rules.factor
                    ),
                    (0, 0)
                );
            }
            Err(error) => assert!(
                matches!(error, CoreError::InvalidParameter { param: "size", .. }),
                "{size:?}: {error}"
            ),
        }
    }

    proptest::proptest! {
        // Whatever a client sends as `size` (and whatever ratio its prompt names), the answer
        // is a size the engine computes or a 400 naming `size`: never a panic.
        #[test]
        fn any_size_text_is_a_computable_size_or_a_size_error(
            size in "\\PC{0,24}",
            prompt in "\\PC{0,40}",
        ) {
            within_bounds(Some(&size), &prompt, SDXL);
        }

        #[test]
        fn any_width_and_height_is_a_computable_size_or_a_size_error(
            width in 0u64..2_000_000,
            height in 0u64..2_000_000,
            native in proptest::sample::select(vec![64u32, 512, 768, 1024]),
        ) {
            let rules = SizeRules { model: "m", native, factor: 8, max_side: MAX_SIDE };
            within_bounds(Some(&format!("{width}x{height}")), "", rules);
        }

        #[test]
        fn any_preset_with_any_ratio_fits(
            preset in proptest::sample::select(vec!["1K", "1.5K", "2K", "3K", "4K", "adaptive"]),
            w in 0u32..40,
            h in 0u32..40,
            native in proptest::sample::select(vec![64u32, 512, 768, 1024]),
            max_side in proptest::sample::select(vec![256u32, 1024, MAX_SIDE]),
        ) {
            // A model computes at least its native square.
            proptest::prop_assume!(max_side >= native);
            let rules = SizeRules { model: "m", native, factor: 8, max_side };
            let prompt = format!("a {w}:{h} picture");
            within_bounds(Some(preset), &prompt, rules);
            // What a preset answers, a client may send back as an explicit size.
            let answer = resolve(Some(preset), &prompt, rules).unwrap();
            let explicit = format!("{}x{}", answer.width, answer.height);
            proptest::prop_assert!(resolve(Some(&explicit), "", rules).is_ok(), "{explicit}");
        }
    }

    #[test]
    fn a_small_models_4k_rounds_down_rather_than_past_its_budget() {
        let tiny = SizeRules {
            model: "tiny",
            native: 64,
            factor: 8,
            max_side: MAX_SIDE,
        };
        // 313.5x209.0 rounds to 320x208, 66560 pixels over the 256x256 budget.
        let r = resolve(Some("4K"), "a 3:2 picture", tiny).unwrap();
        assert_eq!((r.width, r.height), (304, 208));
        assert!(resolve(Some("304x208"), "", tiny).is_ok());
    }

    #[test]
    fn wide_presets_never_exceed_the_engines_longest_side() {
        for prompt in ["a 21:9 panorama", "a 9:21 banner", "3:1", "16:9"] {
            for preset in ["1K", "2K", "3K", "4K"] {
                let r = resolve(Some(preset), prompt, SDXL).unwrap();
                assert!(
                    r.width <= MAX_SIDE && r.height <= MAX_SIDE,
                    "{preset} {prompt}: {r:?}"
                );
                assert_eq!((r.width % 16, r.height % 16), (0, 0), "{r:?}");
            }
        }
        let (w, h) = wh(Some("4K"), "a 21:9 panorama");
        assert_eq!(w, 4096);
        assert!(
            (f64::from(w) / f64::from(h) - 21.0 / 9.0).abs() < 0.02,
            "{w}x{h}"
        );
    }

    #[test]
    fn explicit_sizes_are_checked_and_aligned() {
        let r = resolve(Some("1500x700"), "", SDXL).unwrap();
        assert_eq!((r.width, r.height), (1500, 700));
        assert_eq!((r.compute_width, r.compute_height), (1504, 704));
        let message = |size| resolve(Some(size), "", SDXL).unwrap_err().to_string();
        let takes = "sdxl takes 512x512 to 4096x4096 pixels' worth in any shape from 1:16 to \
            16:1 with sides up to 4096 px, e.g. 1024x1024, 792x1320 or 4096x4096.";
        assert_eq!(
            message("100x100"),
            format!("size 100x100 is too small: {takes}")
        );
        assert_eq!(
            message("5000x5000"),
            format!("size 5000x5000 is too large: {takes}")
        );
        assert_eq!(
            message("4096x200"),
            format!("size 4096x200 is too narrow: {takes}")
        );
        // Within the pixel budget and the ratio, but a side the engine cannot compute.
        assert_eq!(
            message("16384x1024"),
            format!("size 16384x1024 is too long on one side: {takes}")
        );
        // A small model's examples are its own.
        let tiny = SizeRules {
            model: "tiny-sd",
            native: 64,
            factor: 8,
            max_side: MAX_SIDE,
        };
        let error = resolve(Some("16x16"), "", tiny).unwrap_err().to_string();
        assert_eq!(
            error,
            "size 16x16 is too small: tiny-sd takes 32x32 to 256x256 pixels' worth in any \
             shape from 1:16 to 16:1 with sides up to 4096 px, e.g. 64x64, 48x80 or 256x256."
        );
        for bad in ["2k", "1024*1024", "1024X1024", "big", ""] {
            let error = resolve(Some(bad), "", SDXL).unwrap_err();
            assert!(
                matches!(error, CoreError::InvalidParameter { param: "size", .. }),
                "{bad}"
            );
        }
    }

    /// A model whose positions end early (SD3.5's position table): presets shrink to fit,
    /// larger explicit sizes are refused with the model's own longest side.
    #[test]
    fn a_model_shorter_than_the_engine_caps_presets_and_refuses_beyond() {
        let sd3 = SizeRules {
            model: "tiny-sd3",
            native: 256,
            factor: 16,
            max_side: 256,
        };
        let four_k = resolve(Some("4K"), "", sd3).unwrap();
        assert_eq!((four_k.width, four_k.height), (256, 256));
        let wide = resolve(Some("2K"), "a 16:9 banner", sd3).unwrap();
        assert!(wide.width <= 256 && wide.height < wide.width, "{wide:?}");
        let error = resolve(Some("320x192"), "", sd3).unwrap_err().to_string();
        assert!(
            error.contains("too l") && error.contains("up to 256 px"),
            "{error}"
        );
    }
}
