//! Prometheus text exposition (format 0.0.4): each family's `# HELP` and `# TYPE` right above all its samples, in
//! the order the families were declared, label values escaped.

use std::fmt::Write;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: String,
}

/// The families of one scrape, filled sample by sample in any order and written grouped.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value (`\`, `"` and newlines).
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A float as the text format writes it (`NaN`, `+Inf`, `-Inf` included).
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        v.to_string()
    }
}

impl Exposition {
    /// Declares a family (samples of undeclared families are a bug and are dropped).
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) {
        debug_assert!(self.families.iter().all(|f| f.name != name), "{name} declared twice");
        self.families.push(Family {
            name,
            kind,
            help,
            samples: String::new(),
        });
    }

    /// One sample of `family`: `suffix` is `_bucket`, `_sum`, `_count` for a histogram, empty otherwise.
    pub fn sample(&mut self, family: &str, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let Some(f) = self.families.iter_mut().find(|f| f.name == family) else {
            debug_assert!(false, "no family {family}");
            return;
        };
        let _ = write!(f.samples, "{}{suffix}", f.name);
        if !labels.is_empty() {
            f.samples.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(f.samples, "{sep}{k}=\"{}\"", label_value(v));
            }
            f.samples.push('}');
        }
        let _ = writeln!(f.samples, " {value}");
    }

    /// The text: each family with samples, its HELP and TYPE first.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            out.push_str(&f.samples);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_added_in_any_order_come_out_under_their_family_with_escaped_labels() {
        let mut e = Exposition::default();
        e.family("a_total", Kind::Counter, "As.");
        e.family("b", Kind::Gauge, "Bs.");
        e.family("unused", Kind::Gauge, "Never sampled.");
        e.sample("a_total", "", &[("release", "v1")], 1);
        e.sample("b", "", &[], 2.5);
        e.sample("a_total", "", &[("release", "q\"\\\n")], 3);
        assert_eq!(
            e.render(),
            "# HELP a_total As.\n# TYPE a_total counter\na_total{release=\"v1\"} 1\n\
             a_total{release=\"q\\\"\\\\\\n\"} 3\n# HELP b Bs.\n# TYPE b gauge\nb 2.5\n"
        );
    }
}
