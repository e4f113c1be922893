//! Camera frames: decoding JPEG, PNG and BMP bytes into 8-bit pixels, safely.
//!
//! This module owns turning untrusted image bytes into a [`Frame`]. It reads the header first
//! and refuses absurd dimensions before allocating anything (decompression bombs), converts
//! 16-bit and alpha images to 8-bit gray or RGB, and can decode large JPEGs at a reduced DCT
//! scale when the model needs far fewer pixels than the camera delivers. It does not resize or
//! normalise; [`crate::preprocess`] does.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::manifest::ColorSpace;

/// A decoded camera frame, 8 bits per channel, rows top to bottom, no padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    width: u32,
    height: u32,
    color: ColorSpace,
    pixels: Vec<u8>,
    source_width: u32,
    source_height: u32,
}

impl Frame {
    /// Wraps raw pixels; `pixels.len()` must equal `width * height * channels`.
    pub fn new(
        width: u32,
        height: u32,
        color: ColorSpace,
        pixels: Vec<u8>,
    ) -> Result<Self, DecodeError> {
        let expected = width as usize * height as usize * color.channels();
        if pixels.len() != expected || width == 0 || height == 0 {
            return Err(DecodeError::Corrupt(format!(
                "{width}x{height} {color:?} needs {expected} bytes, got {}",
                pixels.len()
            )));
        }
        Ok(Frame {
            width,
            height,
            color,
            pixels,
            source_width: width,
            source_height: height,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Colour space of the pixels.
    pub fn color(&self) -> ColorSpace {
        self.color
    }

    /// The pixels, interleaved per channel.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Width of the image as encoded; differs from [`Frame::width`] after a DCT-scaled decode.
    pub fn source_width(&self) -> u32 {
        self.source_width
    }

    /// Height of the image as encoded; differs from [`Frame::height`] after a DCT-scaled decode.
    pub fn source_height(&self) -> u32 {
        self.source_height
    }

    /// The frame in another colour space (ITU-R BT.601 luma for RGB to gray).
    pub fn into_color(self, color: ColorSpace) -> Frame {
        if self.color == color {
            return self;
        }
        let pixels = match color {
            ColorSpace::Gray => self
                .pixels
                .chunks_exact(3)
                .map(|p| {
                    let y = 299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]);
                    ((y + 500) / 1000) as u8
                })
                .collect(),
            ColorSpace::Rgb => self.pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        };
        Frame {
            color,
            pixels,
            ..self
        }
    }
}

/// Why image bytes could not become a frame.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("image is empty (0 bytes)")]
    Empty,
    /// The bytes start like no image format we read.
    #[error("not a JPEG, PNG or BMP image (starts with {0})")]
    UnknownFormat(String),
    /// A format we recognise but do not take from cameras.
    #[error("{0:?} images are not accepted; send JPEG, PNG or BMP")]
    Unsupported(ImageFormat),
    /// The header claims more pixels than allowed.
    #[error("image claims {width}x{height} pixels, over the limit of {limit}")]
    TooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit that was exceeded, in words.
        limit: String,
    },
    /// The image data is damaged or truncated, as our own checks find it.
    #[error("image is corrupt or truncated: {0}")]
    Corrupt(String),
    /// The image decoder could not read the data.
    #[error("image is corrupt or truncated")]
    Unreadable(#[source] image::ImageError),
    /// The JPEG decoder could not read the data (reduced-scale JPEG path).
    #[error("JPEG is corrupt or truncated")]
    UnreadableJpeg(#[source] jpeg_decoder::Error),
    /// An image decoder panicked on the data: a decoder bug that this frame triggers. The
    /// frame is as unreadable as a corrupt one; the text is the panic's.
    #[error("image is corrupt: the image decoder failed on it ({0})")]
    DecoderPanicked(String),
}

/// Limits and options for decoding untrusted frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Largest accepted width or height.
    pub max_side: u32,
    /// Largest accepted pixel count (width times height).
    pub max_pixels: u64,
    /// When set, a JPEG may be decoded at a reduced DCT scale (1/2, 1/4 or 1/8) as long as the
    /// result stays at least this wide and high.
    pub jpeg_min_size: Option<(u32, u32)>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_side: 16_384,
            max_pixels: 64_000_000,
            jpeg_min_size: None,
        }
    }
}

/// Decodes image bytes into an 8-bit gray or RGB frame.
///
/// A panic inside a decoder (a bug a malformed frame can trigger, as fuzzing found in
/// zune-jpeg 0.5.15's 4x4 IDCT) is caught here and returned as
/// [`DecodeError::DecoderPanicked`], so every caller (the agent's workers, `classify`, the
/// validation gate, `model-bundle`) treats that frame as unreadable and goes on.
pub fn decode(bytes: &[u8], options: &DecodeOptions) -> Result<Frame, DecodeError> {
    // The decoders own all the state they touch; nothing of ours is left half-updated.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_untrusted(bytes, options)
    }))
    .unwrap_or_else(|panic| Err(DecodeError::DecoderPanicked(panic_text(panic.as_ref()))))
}

/// The text a panic was raised with, when it is text (for reports of a caught panic).
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn decode_untrusted(bytes: &[u8], options: &DecodeOptions) -> Result<Frame, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format =
        image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat(magic(bytes)))?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Bmp
    ) {
        return Err(DecodeError::Unsupported(format));
    }
    if format == ImageFormat::Jpeg && !has_jpeg_end_marker(bytes) {
        return Err(DecodeError::Corrupt(
            "JPEG is truncated: no end-of-image marker".into(),
        ));
    }
    // A PNG's size is in its first chunk: check it before a decoder reads any further, so a
    // header claiming absurd dimensions is refused as such whatever follows it.
    if format == ImageFormat::Png
        && let Some((width, height)) = png_header_dimensions(bytes)
    {
        check_dimensions(width, height, options)?;
    }
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(DecodeError::Unreadable)?;
    check_dimensions(width, height, options)?;
    if format == ImageFormat::Jpeg {
        check_jpeg_length(bytes.len(), width, height)?;
    }
    if format == ImageFormat::Jpeg
        && let Some((min_w, min_h)) = options.jpeg_min_size
        && let Some(frame) = decode_jpeg_scaled(bytes, width, height, min_w, min_h)?
    {
        return Ok(frame);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(options.max_side);
    limits.max_image_height = Some(options.max_side);
    // Room for the decoded image at 16 bits and four channels, plus the decoder's own buffers.
    limits.max_alloc = Some(
        options
            .max_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(limits);
    let image = reader.decode().map_err(DecodeError::Unreadable)?;
    from_dynamic(image)
}

/// Width and height from a PNG's IHDR chunk, which the format requires to come first.
fn png_header_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(12..24)?;
    if &ihdr[..4] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(ihdr[4..8].try_into().ok()?);
    let height = u32::from_be_bytes(ihdr[8..12].try_into().ok()?);
    Some((width, height))
}

fn check_dimensions(width: u32, height: u32, options: &DecodeOptions) -> Result<(), DecodeError> {
    let limit = if width == 0 || height == 0 {
        Some("at least one pixel".to_owned())
    } else if width > options.max_side || height > options.max_side {
        Some(format!("{} pixels per side", options.max_side))
    } else if u64::from(width) * u64::from(height) > options.max_pixels {
        Some(format!("{} pixels", options.max_pixels))
    } else {
        None
    };
    match limit {
        Some(limit) => Err(DecodeError::TooLarge {
            width,
            height,
            limit,
        }),
        None => Ok(()),
    }
}

/// Decodes a JPEG at the smallest DCT scale that keeps at least `min_w` x `min_h` pixels, or
/// returns `None` when no reduction is possible (the caller then decodes at full size).
fn decode_jpeg_scaled(
    bytes: &[u8],
    width: u32,
    height: u32,
    min_w: u32,
    min_h: u32,
) -> Result<Option<Frame>, DecodeError> {
    if min_w.saturating_mul(2) > width || min_h.saturating_mul(2) > height {
        return Ok(None);
    }
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let (req_w, req_h) = (
        u16::try_from(min_w).unwrap_or(u16::MAX),
        u16::try_from(min_h).unwrap_or(u16::MAX),
    );
    let (out_w, out_h) = decoder
        .scale(req_w, req_h)
        .map_err(DecodeError::UnreadableJpeg)?;
    let info = decoder
        .info()
        .ok_or_else(|| DecodeError::Corrupt("JPEG header unreadable".into()))?;
    let color = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => ColorSpace::Gray,
        jpeg_decoder::PixelFormat::RGB24 => ColorSpace::Rgb,
        // CMYK and 16-bit lossless JPEGs take the general path.
        _ => return Ok(None),
    };
    let pixels = decoder.decode().map_err(DecodeError::UnreadableJpeg)?;
    let mut frame = Frame::new(u32::from(out_w), u32::from(out_h), color, pixels)?;
    frame.source_width = width;
    frame.source_height = height;
    Ok(Some(frame))
}

fn from_dynamic(image: DynamicImage) -> Result<Frame, DecodeError> {
    let (width, height) = (image.width(), image.height());
    let (color, pixels) = match image {
        DynamicImage::ImageLuma8(buf) => (ColorSpace::Gray, buf.into_raw()),
        DynamicImage::ImageRgb8(buf) => (ColorSpace::Rgb, buf.into_raw()),
        img @ (DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLumaA16(_)) => (ColorSpace::Gray, img.into_luma8().into_raw()),
        other => (ColorSpace::Rgb, other.into_rgb8().into_raw()),
    };
    Frame::new(width, height, color, pixels)
}

/// A complete JPEG ends with the EOI marker `FF D9`; some cameras pad a few bytes after it.
/// Refuses a JPEG too short to hold the image its header declares.
///
/// Every Huffman-coded JPEG has a component sampled at full resolution, with one 8x8 block per
/// 8x8 pixels, and spends at least one bit on each block (its DC code). A file with fewer bytes
/// than a bit per block cannot be whole: the decoders fill what is missing with gray, and a
/// few hundred bytes declaring a 50-megapixel frame would cost a worker a fifth of a second and
/// hundreds of megabytes, then be decided as a plain gray part.
fn check_jpeg_length(len: usize, width: u32, height: u32) -> Result<(), DecodeError> {
    let blocks = u64::from(width.div_ceil(8)) * u64::from(height.div_ceil(8));
    let least = blocks.div_ceil(8);
    if (len as u64) < least {
        return Err(DecodeError::Corrupt(format!(
            "{len} bytes cannot hold the {width}x{height} JPEG its header declares (at least \
             {least} bytes)"
        )));
    }
    Ok(())
}

fn has_jpeg_end_marker(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xff, 0xd9])
}

fn magic(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", head.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encode");
        out.into_inner()
    }

    #[test]
    fn gray_png_decodes_to_gray() {
        let img = GrayImage::from_fn(7, 5, |x, y| Luma([(x * 10 + y) as u8]));
        let frame = decode(
            &encode(img.clone().into(), ImageFormat::Png),
            &DecodeOptions::default(),
        )
        .expect("decode");
        assert_eq!(
            (frame.width(), frame.height(), frame.color()),
            (7, 5, ColorSpace::Gray)
        );
        assert_eq!(frame.pixels(), img.as_raw().as_slice());
    }

    #[test]
    fn sixteen_bit_png_is_converted_to_eight_bits() {
        let img: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_fn(4, 4, |_, _| Luma([0x8000]));
        let frame = decode(
            &encode(DynamicImage::ImageLuma16(img), ImageFormat::Png),
            &DecodeOptions::default(),
        )
        .expect("decode");
        assert_eq!(frame.color(), ColorSpace::Gray);
        assert!(
            frame.pixels().iter().all(|&v| v == 128),
            "{:?}",
            frame.pixels()
        );
    }

    #[test]
    fn rgb_bmp_decodes_and_converts_to_gray() {
        let img = RgbImage::from_fn(3, 2, |_, _| Rgb([255, 0, 0]));
        let frame = decode(
            &encode(img.into(), ImageFormat::Bmp),
            &DecodeOptions::default(),
        )
        .expect("decode");
        assert_eq!(frame.color(), ColorSpace::Rgb);
        let gray = frame.into_color(ColorSpace::Gray);
        assert!(
            gray.pixels().iter().all(|&v| v == 76),
            "{:?}",
            gray.pixels()
        );
    }

    #[test]
    fn large_jpeg_decodes_at_reduced_dct_scale() {
        let img = GrayImage::from_fn(1280, 1024, |x, _| Luma([(x / 5) as u8]));
        let jpeg = encode(img.into(), ImageFormat::Jpeg);
        let options = DecodeOptions {
            jpeg_min_size: Some((640, 512)),
            ..DecodeOptions::default()
        };
        let frame = decode(&jpeg, &options).expect("decode");
        assert_eq!((frame.width(), frame.height()), (640, 512));
        assert_eq!((frame.source_width(), frame.source_height()), (1280, 1024));
    }

    #[test]
    fn malformed_inputs_give_clear_errors() {
        let opts = DecodeOptions::default();
        assert!(matches!(decode(b"", &opts), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(b"this is text, not a picture", &opts),
            Err(DecodeError::UnknownFormat(_))
        ));
        let jpeg = encode(GrayImage::new(64, 64).into(), ImageFormat::Jpeg);
        let err = decode(&jpeg[..jpeg.len() / 2], &opts).expect_err("truncated JPEG accepted");
        assert!(
            matches!(
                err,
                DecodeError::Corrupt(_)
                    | DecodeError::Unreadable(_)
                    | DecodeError::UnreadableJpeg(_)
            ),
            "{err}"
        );
    }

    #[test]
    fn a_jpeg_too_short_for_its_declared_size_is_refused_not_decoded_as_gray() {
        // Found by fuzzing: 197 bytes whose header declares 7264x7245. The decoder filled the
        // missing data with gray, and the agent passed the part.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/corrupt/52mp-declared-in-197-bytes.jpg"
        );
        let bytes = std::fs::read(path).expect("fixture");
        for dct in [None, Some((16, 16))] {
            let opts = DecodeOptions {
                jpeg_min_size: dct,
                ..DecodeOptions::default()
            };
            let err = decode(&bytes, &opts).expect_err("a 197-byte 52 MP JPEG was decoded");
            let text = err.to_string();
            assert!(matches!(err, DecodeError::Corrupt(_)), "{text}");
            assert!(
                text.contains("197 bytes cannot hold the 7264x7245 JPEG"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_frame_that_makes_the_jpeg_decoder_panic_is_unreadable_not_a_crash() {
        // Found by fuzzing: 644 bytes on which zune-jpeg 0.5.15 unwraps a None in its 4x4 IDCT.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/corrupt/zune-jpeg-idct-panic.jpg"
        );
        let bytes = std::fs::read(path).expect("fixture");
        let err = decode(&bytes, &DecodeOptions::default()).expect_err("decoded");
        assert!(matches!(err, DecodeError::DecoderPanicked(_)), "{err}");
        assert!(err.to_string().starts_with("image is corrupt"), "{err}");
    }

    #[test]
    fn the_length_check_passes_the_most_compressible_real_frame() {
        // A uniform frame is the smallest JPEG of its size an encoder makes.
        let flat = GrayImage::from_pixel(1280, 1024, Luma([128]));
        let jpeg = encode(flat.into(), ImageFormat::Jpeg);
        let frame = decode(&jpeg, &DecodeOptions::default()).expect("uniform frame");
        assert_eq!((frame.width(), frame.height()), (1280, 1024));
    }

    #[test]
    fn header_claiming_huge_size_is_refused_before_decoding() {
        let mut bmp = encode(GrayImage::new(8, 8).into(), ImageFormat::Bmp);
        // BITMAPINFOHEADER width and height live at bytes 18..26.
        bmp[18..22].copy_from_slice(&20_000i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&20_000i32.to_le_bytes());
        let err = decode(&bmp, &DecodeOptions::default()).expect_err("bomb accepted");
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    width: 20_000,
                    height: 20_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn png_header_claiming_huge_dimensions_is_refused_before_decoding() {
        // Signature, then an IHDR claiming 100000x100000 and nothing after it.
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.extend_from_slice(&13u32.to_be_bytes());
        bytes.extend_from_slice(b"IHDR");
        bytes.extend_from_slice(&100_000u32.to_be_bytes());
        bytes.extend_from_slice(&100_000u32.to_be_bytes());
        bytes.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0, 0]);
        let err = decode(&bytes, &DecodeOptions::default()).expect_err("refused");
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("100000x100000"), "{err}");
    }
}
