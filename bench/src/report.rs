//! The printed table: one row per figure, with its goal and whether the goal was met.

use std::fmt::Write;

/// One figure.
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub goal: String,
    /// `None` for figures quoted for information only.
    pub met: Option<bool>,
}

/// A titled list of rows.
#[derive(Default)]
pub struct Table {
    sections: Vec<(String, Vec<Row>)>,
}

impl Table {
    pub fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    /// Adds a figure checked against a goal.
    pub fn check(&mut self, figure: &str, measured: String, goal: &str, met: bool) {
        self.push(Row {
            figure: figure.to_string(),
            measured,
            goal: goal.to_string(),
            met: Some(met),
        });
    }

    /// Adds a figure with no goal of its own.
    pub fn info(&mut self, figure: &str, measured: String) {
        self.push(Row {
            figure: figure.to_string(),
            measured,
            goal: String::new(),
            met: None,
        });
    }

    fn push(&mut self, row: Row) {
        if self.sections.is_empty() {
            self.section("");
        }
        if let Some((_, rows)) = self.sections.last_mut() {
            rows.push(row);
        }
    }

    /// The goals that were missed, by figure name.
    pub fn misses(&self) -> Vec<&str> {
        self.sections
            .iter()
            .flat_map(|(_, rows)| rows)
            .filter(|r| r.met == Some(false))
            .map(|r| r.figure.as_str())
            .collect()
    }

    pub fn render(&self) -> String {
        let rows = || self.sections.iter().flat_map(|(_, r)| r);
        let w0 = rows().map(|r| r.figure.len()).max().unwrap_or(0).max(6);
        let w1 = rows().map(|r| r.measured.len()).max().unwrap_or(0).max(8);
        let w2 = rows().map(|r| r.goal.len()).max().unwrap_or(0).max(4);
        let mut out = String::new();
        let rule = "-".repeat(w0 + w1 + w2 + 14);
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:<w2$}  result",
            "figure", "measured", "goal"
        );
        for (title, rows) in &self.sections {
            let _ = writeln!(out, "{rule}");
            if !title.is_empty() {
                let _ = writeln!(out, "{title}");
            }
            for r in rows {
                let mark = match r.met {
                    Some(true) => "ok",
                    Some(false) => "MISS",
                    None => "",
                };
                let _ = writeln!(
                    out,
                    "{:<w0$}  {:>w1$}  {:<w2$}  {mark}",
                    r.figure, r.measured, r.goal
                );
            }
        }
        let _ = writeln!(out, "{rule}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_misses_and_aligns_columns() {
        let mut t = Table::default();
        t.section("store");
        t.check("write p99", "1.00 ms".into(), "<= 2 ms", true);
        t.check("read p99", "9.00 ms".into(), "<= 2 ms", false);
        t.info("rate", "500/s".into());
        assert_eq!(t.misses(), vec!["read p99"]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(" ms")).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("ok") && lines[1].ends_with("MISS"), "{text}");
        assert_eq!(lines[0].find("<="), lines[1].find("<="), "{text}");
    }
}
