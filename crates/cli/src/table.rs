//! Plain aligned columns for listings on a terminal (`--json` gives the machine form).

/// Print `rows` under `headers`, each column as wide as its widest cell.
pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(headers, rows));
}

pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC; `-` for none.
pub fn time(unix: Option<i64>) -> String {
    let Some(unix) = unix else {
        return "-".into();
    };
    let [year, month, day, hour, minute, second] = seedbed_client::utc_parts(unix);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_and_times_are_utc() {
        let out = super::render(
            &["ID", "STATUS"],
            &[
                vec!["a".into(), "queued".into()],
                vec!["bbbb".into(), "ok".into()],
            ],
        );
        assert_eq!(out, "ID    STATUS\na     queued\nbbbb  ok\n");
        assert_eq!(super::time(Some(0)), "1970-01-01 00:00:00");
        assert_eq!(super::time(Some(1_795_000_000)), "2026-11-18 11:06:40");
        assert_eq!(super::time(Some(951_782_400)), "2000-02-29 00:00:00");
        assert_eq!(super::time(None), "-");
    }
}
