//! The live pull display on a terminal: one line per layer (short digest,
//! status, bytes/total, rate), redrawn in place with ANSI cursor moves as
//! events arrive, like `docker pull`. Not a terminal: `images.rs` prints
//! one plain line per event instead.

use std::io::Write;
use std::time::Instant;

use berth_api::v1 as pb;

use crate::images::{human_size, short};

struct Layer {
    digest: String,
    status: String,
    current: u64,
    total: u64,
    started: Instant,
}

impl Layer {
    fn line(&self, now: Instant) -> String {
        let short = short(&self.digest);
        match self.status.as_str() {
            "exists" => format!("{short}: already present"),
            "done" => format!("{short}: downloaded {}", human_size(self.total)),
            _ => {
                let secs = now.duration_since(self.started).as_secs_f64();
                let rate = if secs > 0.0 { (self.current as f64 / secs) as u64 } else { 0 };
                format!(
                    "{short}: downloading {}/{} ({}/s)",
                    human_size(self.current),
                    human_size(self.total),
                    human_size(rate)
                )
            }
        }
    }
}

/// The layers seen so far and how many lines are on screen.
#[derive(Default)]
pub struct Display {
    layers: Vec<Layer>,
    drawn: usize,
    status: String,
}

impl Display {
    /// Folds one event in and redraws.
    pub fn event(&mut self, out: &mut impl Write, p: &pb::PullProgress) -> std::io::Result<()> {
        let now = Instant::now();
        if p.digest.is_empty() {
            self.status = p.status.clone();
        } else {
            match self.layers.iter_mut().find(|l| l.digest == p.digest) {
                Some(l) => {
                    l.status = p.status.clone();
                    l.current = p.current;
                    l.total = p.total;
                }
                None => self.layers.push(Layer {
                    digest: p.digest.clone(),
                    status: p.status.clone(),
                    current: p.current,
                    total: p.total,
                    started: now,
                }),
            }
        }
        self.redraw(out, now, p.image.as_ref())
    }

    fn redraw(&mut self, out: &mut impl Write, now: Instant, image: Option<&pb::Image>) -> std::io::Result<()> {
        let mut frame = String::new();
        if self.drawn > 0 {
            frame.push_str(&format!("\x1b[{}A", self.drawn));
        }
        let mut lines: Vec<String> = self.layers.iter().map(|l| l.line(now)).collect();
        match image {
            Some(i) => lines.push(format!("pulled {} ({})", i.name, i.manifest_digest)),
            None if !self.status.is_empty() => lines.push(format!("{}...", self.status)),
            None => {}
        }
        for l in &lines {
            frame.push_str("\r\x1b[2K");
            frame.push_str(&crate::output::escape(l));
            frame.push('\n');
        }
        self.drawn = lines.len();
        out.write_all(frame.as_bytes())?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redraws_in_place_one_line_per_layer() {
        let d1 = format!("sha256:{}", "ab".repeat(32));
        let d2 = format!("sha256:{}", "cd".repeat(32));
        let mut display = Display::default();
        let mut out = Vec::new();
        let ev = |d: &str, status: &str, current| pb::PullProgress {
            digest: d.to_string(),
            current,
            total: 2000,
            status: status.into(),
            ..Default::default()
        };
        display.event(&mut out, &ev(&d1, "downloading", 0)).expect("draw");
        display.event(&mut out, &ev(&d2, "exists", 2000)).expect("draw");
        out.clear();
        display.event(&mut out, &ev(&d1, "done", 2000)).expect("draw");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("\x1b[2A"), "moves up over the two drawn lines: {text:?}");
        assert!(text.contains("abababababab: downloaded 2.0 kB\n"), "{text:?}");
        assert!(text.contains("cdcdcdcdcdcd: already present\n"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 2);
    }
}
