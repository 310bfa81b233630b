//! A tiny hand-drawn bitmap font holding only the glyphs the watermark needs.
//!
//! Each glyph is 5 columns by 8 rows; every row is a `u8` whose low 5 bits are
//! the pixels, bit 4 being the leftmost column. Rows 0-6 sit on the baseline and
//! row 7 is the descender (only `g` uses it), so the text never needs kerning.

/// Glyph width in font pixels.
pub(super) const GLYPH_W: u32 = 5;
/// Glyph height in font pixels, descender included.
pub(super) const GLYPH_H: u32 = 8;
/// Blank font pixels between two glyphs.
pub(super) const SPACING: u32 = 1;

/// Bitmap of `c`; characters without a glyph render as blanks rather than
/// failing, since the watermark text is fixed and a blank is harmless.
pub(super) fn glyph(c: char) -> [u8; GLYPH_H as usize] {
    match c {
        'A' => [
            0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0,
        ],
        'I' => [
            0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0,
        ],
        'a' => [0, 0, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0],
        'd' => [
            0b00001, 0b00001, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0,
        ],
        'e' => [0, 0, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0],
        'g' => [0, 0, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'n' => [0, 0, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0],
        'r' => [0, 0, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0],
        't' => [0, 0b01000, 0b11110, 0b01000, 0b01000, 0b01001, 0b00110, 0],
        _ => [0; GLYPH_H as usize],
    }
}

/// Width in font pixels of `text` laid out on one line.
pub(super) fn text_width(text: &str) -> u32 {
    let n = text.chars().count() as u32;
    (n * (GLYPH_W + SPACING)).saturating_sub(SPACING)
}

/// Whether font pixel (`x`, `y`) of the laid-out `text` is ink.
pub(super) fn ink(text: &str, x: u32, y: u32) -> bool {
    let cell = GLYPH_W + SPACING;
    let (col, dx) = (x / cell, x % cell);
    if dx >= GLYPH_W || y >= GLYPH_H {
        return false;
    }
    text.chars()
        .nth(col as usize)
        .is_some_and(|c| glyph(c)[y as usize] >> (GLYPH_W - 1 - dx) & 1 == 1)
}
