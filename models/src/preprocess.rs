//! From a decoded frame to the model's input tensor, as the manifest prescribes.
//!
//! This module owns the region of interest, the tiling grid, resizing (exact block means for
//! `area` with whole-number factors, as in training; otherwise a SIMD resizer,
//! `fast_image_resize`) and normalisation straight into the tensor's memory through a
//! per-channel lookup table. One [`Preprocessor`] belongs to one worker thread: it keeps its
//! resizer and scratch buffers between frames.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use tract_onnx::prelude::{Tensor, tract_ndarray};

use crate::frame::Frame;
use crate::manifest::{ColorSpace, JpegDecode, Layout, Manifest, ResizeFilter, Roi};

/// Why a frame could not be turned into an input tensor.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The manifest's region of interest does not fit in the frame.
    #[error(
        "region of interest {}x{} at ({}, {}) does not fit in the {frame_width}x{frame_height} frame",
        roi.width, roi.height, roi.x, roi.y
    )]
    RoiOutside {
        /// The region from the manifest.
        roi: Roi,
        /// Frame width as encoded.
        frame_width: u32,
        /// Frame height as encoded.
        frame_height: u32,
    },
    /// A tile of the grid would be less than one pixel wide or high.
    #[error("the {rows}x{cols} tile grid does not fit in a {width}x{height} region")]
    TilesTooSmall {
        /// Tile rows.
        rows: u32,
        /// Tile columns.
        cols: u32,
        /// Region width.
        width: u32,
        /// Region height.
        height: u32,
    },
    /// A tile's pixel buffer does not match its size.
    #[error("a tile's image buffer does not match its size")]
    Buffer(#[source] fast_image_resize::ImageBufferError),
    /// The resizer refused the images.
    #[error("resize failed")]
    Resize(#[source] fast_image_resize::ResizeError),
    /// The tiles' values do not make a tensor of the model's input shape.
    #[error("the input tensor does not have the model's shape")]
    Shape(#[source] tract_ndarray::ShapeError),
}

/// The model input image of one tile, before normalisation, kept for statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputStats {
    /// Mean pixel value on the 0-255 scale, averaged over channels and tiles.
    pub brightness: f32,
    /// Pixel standard deviation on the 0-255 scale.
    pub contrast: f32,
}

/// Turns frames into input tensors for one model.
pub struct Preprocessor {
    shape: Vec<usize>,
    layout: Layout,
    color: ColorSpace,
    width: u32,
    height: u32,
    algorithm: ResizeAlg,
    area: bool,
    scaled_jpeg: bool,
    roi: Option<Roi>,
    rows: u32,
    cols: u32,
    lut: Vec<[f32; 256]>,
    resizer: Resizer,
    scratch: Vec<u8>,
}

impl Preprocessor {
    /// Builds the preprocessing a manifest describes.
    pub fn new(manifest: &Manifest) -> Self {
        let pre = &manifest.preprocess;
        let input = &manifest.input;
        let lut = (0..input.color.channels())
            .map(|c| {
                let mean = pre.mean.get(c).copied().unwrap_or(0.0);
                let std = pre.std.get(c).copied().unwrap_or(1.0);
                let mut table = [0f32; 256];
                for (v, slot) in table.iter_mut().enumerate() {
                    *slot = (v as f32 * pre.scale - mean) / std;
                }
                table
            })
            .collect();
        let algorithm = match pre.resize {
            ResizeFilter::Area => ResizeAlg::Convolution(FilterType::Box),
            ResizeFilter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            ResizeFilter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
            ResizeFilter::Nearest => ResizeAlg::Nearest,
        };
        let (rows, cols) = pre.tiles.map_or((1, 1), |t| (t.rows, t.cols));
        Preprocessor {
            shape: input.shape.clone(),
            layout: input.layout,
            color: input.color,
            width: input.width() as u32,
            height: input.height() as u32,
            algorithm,
            area: pre.resize == ResizeFilter::Area,
            scaled_jpeg: pre.jpeg_decode == JpegDecode::Scaled,
            roi: pre.roi,
            rows,
            cols,
            lut,
            resizer: Resizer::new(),
            scratch: Vec::new(),
        }
    }

    /// Input width and height in pixels.
    pub fn input_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The size a JPEG must be decoded to for this model, when the manifest says it was
    /// trained on DCT-scaled decodes (`jpeg_decode = "scaled"`): the whole input, every tile
    /// included. Every consumer (agent, validation gate, `model-bundle`) decodes this way.
    pub fn required_decode_size(&self) -> Option<(u32, u32)> {
        self.scaled_jpeg
            .then_some((self.width * self.cols, self.height * self.rows))
    }

    /// The smallest frame size worth decoding for this model when the agent may choose:
    /// the size the manifest requires (see [`Self::required_decode_size`]), else twice the
    /// input size of one tile, scaled up to the whole frame when tiles cover only part of it.
    /// `None` when DCT-scaled decoding would not help (a region of interest is set) or would
    /// change the model input: an `area` resize is the exact block mean of the full-size
    /// pixels, as in training, and a frame decoded at a reduced DCT scale has already been
    /// low-pass filtered differently (on the sample frames of the first shipped model it
    /// changed 18-35 % of the input values, by up to 5, and the scores by up to 0.07).
    pub fn min_decode_size(&self) -> Option<(u32, u32)> {
        if self.scaled_jpeg {
            return self.required_decode_size();
        }
        if self.roi.is_some() || self.area {
            return None;
        }
        Some((self.width * self.cols * 2, self.height * self.rows * 2))
    }

    /// Builds the input tensor for a frame and measures the input statistics on the way.
    pub fn run(&mut self, frame: &Frame) -> Result<(Tensor, InputStats), PreprocessError> {
        let converted;
        let frame = if frame.color() == self.color {
            frame
        } else {
            converted = frame.clone().into_color(self.color);
            &converted
        };
        let region = self.region(frame)?;
        let channels = self.color.channels();
        let tile_pixels = (self.width * self.height) as usize;
        let mut data = vec![0f32; self.shape.iter().product()];
        let mut sum = 0f64;
        let mut sum_sq = 0f64;
        for row in 0..self.rows {
            for col in 0..self.cols {
                let tile = tile_rect(region, row, col, self.rows, self.cols);
                // A frame already at the input size (a DCT-scaled decode for a `scaled`
                // model) is normalised straight from the decoder's buffer, without a copy.
                let direct = self.is_whole_input(frame, tile);
                if !direct {
                    self.resize_tile(frame, tile)?;
                }
                let source = if direct {
                    frame.pixels()
                } else {
                    &self.scratch
                };
                let index = (row * self.cols + col) as usize;
                let out =
                    &mut data[index * tile_pixels * channels..(index + 1) * tile_pixels * channels];
                let (s, sq) = normalise(source, out, &self.lut, self.layout, tile_pixels);
                sum += s;
                sum_sq += sq;
            }
        }
        let n = (tile_pixels * channels * self.rows as usize * self.cols as usize) as f64;
        let mean = sum / n;
        let stats = InputStats {
            brightness: mean as f32,
            contrast: (sum_sq / n - mean * mean).max(0.0).sqrt() as f32,
        };
        let array = tract_ndarray::ArrayD::from_shape_vec(self.shape.clone(), data)
            .map_err(PreprocessError::Shape)?;
        Ok((array.into(), stats))
    }

    /// The region of interest in the decoded frame's pixel coordinates, as (x, y, w, h) floats.
    fn region(&self, frame: &Frame) -> Result<(f64, f64, f64, f64), PreprocessError> {
        let (sw, sh) = (frame.source_width(), frame.source_height());
        let roi = self.roi.unwrap_or(Roi {
            x: 0,
            y: 0,
            width: sw,
            height: sh,
        });
        let fits = u64::from(roi.x) + u64::from(roi.width) <= u64::from(sw)
            && u64::from(roi.y) + u64::from(roi.height) <= u64::from(sh);
        if !fits {
            return Err(PreprocessError::RoiOutside {
                roi,
                frame_width: sw,
                frame_height: sh,
            });
        }
        if roi.width < self.cols || roi.height < self.rows {
            return Err(PreprocessError::TilesTooSmall {
                rows: self.rows,
                cols: self.cols,
                width: roi.width,
                height: roi.height,
            });
        }
        let fx = f64::from(frame.width()) / f64::from(sw);
        let fy = f64::from(frame.height()) / f64::from(sh);
        Ok((
            f64::from(roi.x) * fx,
            f64::from(roi.y) * fy,
            f64::from(roi.width) * fx,
            f64::from(roi.height) * fy,
        ))
    }

    /// Whether `tile` is the whole of `frame` and the frame is already the input size.
    fn is_whole_input(&self, frame: &Frame, tile: (f64, f64, f64, f64)) -> bool {
        tile == (
            0.0,
            0.0,
            f64::from(frame.width()),
            f64::from(frame.height()),
        ) && frame.width() == self.width
            && frame.height() == self.height
    }

    /// Resizes one tile of `frame` into `self.scratch` (interleaved 8-bit pixels).
    fn resize_tile(
        &mut self,
        frame: &Frame,
        tile: (f64, f64, f64, f64),
    ) -> Result<(), PreprocessError> {
        let pixel_type = match self.color {
            ColorSpace::Gray => PixelType::U8,
            ColorSpace::Rgb => PixelType::U8x3,
        };
        let channels = self.color.channels();
        let (x, y, w, h) = tile;
        if self.is_whole_input(frame, tile) {
            self.scratch.clear();
            self.scratch.extend_from_slice(frame.pixels());
            return Ok(());
        }
        if self.area
            && let Some(factors) = integer_factors(tile, (self.width, self.height))
        {
            let len = (self.width * self.height) as usize * channels;
            self.scratch.resize(len, 0);
            area_downscale(
                frame.pixels(),
                frame.width() as usize,
                channels,
                (x as usize, y as usize),
                factors,
                (self.width as usize, self.height as usize),
                &mut self.scratch,
            );
            return Ok(());
        }
        let src = ImageRef::new(frame.width(), frame.height(), frame.pixels(), pixel_type)
            .map_err(PreprocessError::Buffer)?;
        let len = (self.width * self.height) as usize * channels;
        let buffer = std::mem::take(&mut self.scratch);
        let mut buffer = if buffer.len() == len {
            buffer
        } else {
            vec![0u8; len]
        };
        {
            let mut dst = Image::from_slice_u8(self.width, self.height, &mut buffer, pixel_type)
                .map_err(PreprocessError::Buffer)?;
            let options = ResizeOptions::new()
                .resize_alg(self.algorithm)
                .crop(x, y, w, h);
            self.resizer
                .resize(&src, &mut dst, &options)
                .map_err(PreprocessError::Resize)?;
        }
        self.scratch = buffer;
        Ok(())
    }
}

/// The whole-number downscale factors (x, y) from `tile` to `out` pixels, when the tile starts
/// on a whole pixel and its width and height are exact multiples of the output size.
fn integer_factors(tile: (f64, f64, f64, f64), out: (u32, u32)) -> Option<(usize, usize)> {
    let (x, y, w, h) = tile;
    let whole = |v: f64| v >= 0.0 && v.fract() == 0.0;
    if !(whole(x) && whole(y) && whole(w) && whole(h)) {
        return None;
    }
    let (w, h) = (w as usize, h as usize);
    let (ow, oh) = (out.0 as usize, out.1 as usize);
    if ow == 0 || oh == 0 || w < ow || h < oh || w % ow != 0 || h % oh != 0 {
        return None;
    }
    Some((w / ow, h / oh))
}

/// Area downscale by whole-number factors: each output value is the exact mean of its
/// `fx` x `fy` source block, rounded half up (`(sum + n / 2) / n`), per channel.
///
/// This is the training preprocessing (`area_downscale` in `models/training/preprocess.py`).
/// `fast_image_resize`'s box filter is not: on the 1280x1024 sample frames about 22 % of its
/// 4x downscaled values came out one above the rounded block mean (only where the exact mean's
/// fraction was below one half), which moved a borderline frame's scores by 0.14.
fn area_downscale(
    src: &[u8],
    src_width: usize,
    channels: usize,
    origin: (usize, usize),
    factors: (usize, usize),
    out_size: (usize, usize),
    dst: &mut [u8],
) {
    let (x0, y0) = origin;
    let (fx, fy) = factors;
    let (out_w, out_h) = out_size;
    let n = (fx * fy) as u32;
    let span = out_w * fx * channels;
    // Column sums over the `fy` source rows of one output row, then `fx` columns per output.
    let mut columns = vec![0u32; span];
    for (oy, out_row) in dst
        .chunks_exact_mut(out_w * channels)
        .take(out_h)
        .enumerate()
    {
        columns.fill(0);
        for sy in y0 + oy * fy..y0 + (oy + 1) * fy {
            let start = (sy * src_width + x0) * channels;
            for (c, &v) in columns.iter_mut().zip(&src[start..start + span]) {
                *c += u32::from(v);
            }
        }
        for (ox, out_px) in out_row.chunks_exact_mut(channels).enumerate() {
            for (ch, o) in out_px.iter_mut().enumerate() {
                let sum: u32 = (0..fx)
                    .map(|k| columns[(ox * fx + k) * channels + ch])
                    .sum();
                *o = ((sum + n / 2) / n) as u8;
            }
        }
    }
}

/// Tile `row`, `col` of a `rows` x `cols` grid over `region`, with edges on whole pixels.
fn tile_rect(
    region: (f64, f64, f64, f64),
    row: u32,
    col: u32,
    rows: u32,
    cols: u32,
) -> (f64, f64, f64, f64) {
    let (x, y, w, h) = region;
    let edge =
        |start: f64, len: f64, i: u32, n: u32| (start + len * f64::from(i) / f64::from(n)).round();
    let (x0, x1) = (edge(x, w, col, cols), edge(x, w, col + 1, cols));
    let (y0, y1) = (edge(y, h, row, rows), edge(y, h, row + 1, rows));
    (x0, y0, (x1 - x0).max(1.0), (y1 - y0).max(1.0))
}

/// Writes normalised values of interleaved `pixels` into `out` in the tensor's layout; returns
/// the sum and the sum of squares of the raw pixel values.
fn normalise(
    pixels: &[u8],
    out: &mut [f32],
    lut: &[[f32; 256]],
    layout: Layout,
    plane: usize,
) -> (f64, f64) {
    let channels = lut.len();
    let mut histogram = [0u64; 256];
    match (layout, channels) {
        (_, 1) => {
            let table = &lut[0];
            for (dst, &v) in out.iter_mut().zip(pixels) {
                *dst = table[v as usize];
                histogram[v as usize] += 1;
            }
        }
        (Layout::Nhwc, _) => {
            for (i, (dst, &v)) in out.iter_mut().zip(pixels).enumerate() {
                *dst = lut[i % channels][v as usize];
                histogram[v as usize] += 1;
            }
        }
        (Layout::Nchw, _) => {
            for (p, px) in pixels.chunks_exact(channels).enumerate() {
                for (c, &v) in px.iter().enumerate() {
                    out[c * plane + p] = lut[c][v as usize];
                    histogram[v as usize] += 1;
                }
            }
        }
    }
    histogram
        .iter()
        .enumerate()
        .fold((0.0, 0.0), |(s, sq), (v, &n)| {
            let (v, n) = (v as f64, n as f64);
            (s + v * n, sq + v * v * n)
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::{EXAMPLE, Tiles};

    /// An 8x8 gray frame whose four 4x4 quadrants hold 10, 20, 30 and 40.
    fn quadrant_frame() -> Frame {
        let pixels = (0..64)
            .map(|i| {
                let (x, y) = (i % 8, i / 8);
                10 * (1 + u8::from(x >= 4) + 2 * u8::from(y >= 4))
            })
            .collect();
        Frame::new(8, 8, ColorSpace::Gray, pixels).expect("frame")
    }

    /// A manifest for 2x2 gray input with identity normalisation (values stay 0-255).
    fn manifest(batch: usize, roi: Option<Roi>, tiles: Option<Tiles>) -> Manifest {
        let mut m = Manifest::from_toml(EXAMPLE).expect("example");
        m.input.shape = vec![batch, 1, 2, 2];
        m.preprocess.scale = 1.0;
        m.preprocess.mean = vec![0.0];
        m.preprocess.std = vec![1.0];
        m.preprocess.roi = roi;
        m.preprocess.tiles = tiles;
        m
    }

    /// The values of an f32 tensor, in memory order.
    pub(crate) fn values(tensor: &Tensor) -> Vec<f32> {
        tensor
            .to_plain_array_view::<f32>()
            .expect("f32")
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn each_tile_becomes_one_batch_item() {
        let m = manifest(4, None, Some(Tiles { rows: 2, cols: 2 }));
        let (tensor, stats) = Preprocessor::new(&m).run(&quadrant_frame()).expect("run");
        assert_eq!(tensor.shape(), &[4, 1, 2, 2]);
        let v = values(&tensor);
        for (tile, expected) in [10.0, 20.0, 30.0, 40.0].into_iter().enumerate() {
            assert_eq!(&v[tile * 4..tile * 4 + 4], &[expected; 4], "tile {tile}");
        }
        assert_eq!(stats.brightness, 25.0);
    }

    #[test]
    fn region_of_interest_is_cropped_before_resizing() {
        let roi = Roi {
            x: 4,
            y: 0,
            width: 4,
            height: 4,
        };
        let m = manifest(1, Some(roi), None);
        let (tensor, _) = Preprocessor::new(&m).run(&quadrant_frame()).expect("run");
        assert_eq!(values(&tensor), vec![20.0; 4]);
    }

    #[test]
    fn region_outside_the_frame_is_refused_with_its_numbers() {
        let roi = Roi {
            x: 6,
            y: 0,
            width: 4,
            height: 4,
        };
        let m = manifest(1, Some(roi), None);
        let err = Preprocessor::new(&m)
            .run(&quadrant_frame())
            .expect_err("accepted");
        assert_eq!(
            err.to_string(),
            "region of interest 4x4 at (6, 0) does not fit in the 8x8 frame"
        );
    }

    #[test]
    fn tiles_cover_the_region_without_gaps() {
        let region = (10.0, 0.0, 101.0, 50.0);
        let mut x = 10.0;
        for col in 0..3 {
            let (x0, _, w, h) = tile_rect(region, 0, col, 2, 3);
            assert_eq!(x0, x);
            assert_eq!(h, 25.0);
            x = x0 + w;
        }
        assert_eq!(x, 111.0);
    }

    #[test]
    fn normalise_writes_planes_for_nchw() {
        let lut = vec![[1.0f32; 256], [2.0f32; 256], [3.0f32; 256]];
        let pixels = [10u8, 20, 30, 40, 50, 60];
        let mut out = [0f32; 6];
        let (sum, _) = normalise(&pixels, &mut out, &lut, Layout::Nchw, 2);
        assert_eq!(out, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(sum, 210.0);
    }

    /// `width` x `height` gray input, `area` resize and identity normalisation, so the tensor
    /// holds the 8-bit values.
    fn area_manifest(width: usize, height: usize) -> Manifest {
        let mut m = manifest(1, None, None);
        m.input.shape = vec![1, 1, height, width];
        m.preprocess.resize = ResizeFilter::Area;
        m
    }

    #[test]
    fn area_resize_is_the_exact_block_mean_rounded_half_up() {
        // One 4x4 block summing to 4: the exact mean 0.25 rounds to 0.
        let mut pixels = vec![0u8; 16];
        pixels[3] = 2;
        pixels[7] = 2;
        let frame = Frame::new(4, 4, ColorSpace::Gray, pixels).expect("frame");
        let (tensor, _) = Preprocessor::new(&area_manifest(1, 1))
            .run(&frame)
            .expect("run");
        assert_eq!(values(&tensor), vec![0.0]);
        // A block summing to 8 (mean exactly 0.5) rounds up, as in models/training/preprocess.py.
        let mut pixels = vec![0u8; 16];
        pixels[0] = 8;
        let frame = Frame::new(4, 4, ColorSpace::Gray, pixels).expect("frame");
        let (tensor, _) = Preprocessor::new(&area_manifest(1, 1))
            .run(&frame)
            .expect("run");
        assert_eq!(values(&tensor), vec![1.0]);
    }

    #[test]
    fn area_resize_matches_the_training_downscale_on_noise() {
        // Pseudo-random 64x48 frame, downscaled by 4 (full decode) and by 2 (as after a
        // DCT-scaled decode), against `area_downscale` of models/training/preprocess.py.
        let (w, h) = (64usize, 48usize);
        let mut state = 0x2545_f491_u32;
        let pixels: Vec<u8> = (0..w * h)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect();
        let frame =
            Frame::new(w as u32, h as u32, ColorSpace::Gray, pixels.clone()).expect("frame");
        for f in [4usize, 2] {
            let (ow, oh) = (w / f, h / f);
            let (tensor, _) = Preprocessor::new(&area_manifest(ow, oh))
                .run(&frame)
                .expect("run");
            let expected: Vec<f32> = (0..ow * oh)
                .map(|i| {
                    let (ox, oy) = (i % ow, i / ow);
                    let sum: u32 = (0..f * f)
                        .map(|k| u32::from(pixels[(oy * f + k / f) * w + ox * f + k % f]))
                        .sum();
                    ((sum + (f * f / 2) as u32) / (f * f) as u32) as f32
                })
                .collect();
            assert_eq!(values(&tensor), expected, "factor {f}");
        }
    }

    #[test]
    fn area_resize_with_a_fractional_factor_still_works() {
        let frame = quadrant_frame();
        let (tensor, _) = Preprocessor::new(&area_manifest(3, 3))
            .run(&frame)
            .expect("run");
        let v = values(&tensor);
        assert_eq!(v.len(), 9);
        assert_eq!((v[0], v[8]), (10.0, 40.0));
    }

    #[test]
    fn area_models_decode_at_full_size() {
        let area = area_manifest(2, 2);
        assert_eq!(Preprocessor::new(&area).min_decode_size(), None);
        let mut bilinear = area;
        bilinear.preprocess.resize = ResizeFilter::Bilinear;
        assert_eq!(Preprocessor::new(&bilinear).min_decode_size(), Some((4, 4)));
    }

    #[test]
    fn area_resize_averages_each_rgb_channel_separately() {
        // 4x2 RGB frame to 2x1: left block (1, 2, 3) and (3, 4, 6); right block all 200, 0, 9.
        let pixels = vec![
            1, 2, 3, 3, 4, 6, 200, 0, 9, 200, 0, 9, //
            1, 2, 3, 3, 4, 6, 200, 0, 9, 200, 0, 9,
        ];
        let frame = Frame::new(4, 2, ColorSpace::Rgb, pixels).expect("frame");
        let mut m = area_manifest(2, 1);
        m.input.shape = vec![1, 1, 2, 3];
        m.input.layout = Layout::Nhwc;
        m.input.color = ColorSpace::Rgb;
        m.preprocess.mean = vec![0.0; 3];
        m.preprocess.std = vec![1.0; 3];
        let (tensor, _) = Preprocessor::new(&m).run(&frame).expect("run");
        assert_eq!(values(&tensor), vec![2.0, 3.0, 5.0, 200.0, 0.0, 9.0]);
    }
}
