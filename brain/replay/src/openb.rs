//! The Alibaba openb trace's CSV files (`../shared/data/openb/`): nodes
//! `sn,cpu_milli,memory_mib,gpu,model`; pods
//! `name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`. Parsing
//! takes text, not files (the core does no I/O); a bad line is an error
//! naming the line, the column and the value.

use crate::cluster::{GPU_MILLI, Node, Pod};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("{what}: missing header")]
    Empty { what: String },
    #[error("{what}: the header has no column {column:?}")]
    NoColumn { what: String, column: &'static str },
    #[error("{what} line {line}: column {column} is {value:?}, not {expected}")]
    Bad {
        what: String,
        line: usize,
        column: &'static str,
        value: String,
        expected: &'static str,
    },
}

struct Table<'a> {
    what: &'a str,
    header: Vec<&'a str>,
}

impl<'a> Table<'a> {
    fn col(&self, name: &'static str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| TraceError::NoColumn {
                what: self.what.to_string(),
                column: name,
            })
    }

    fn num(
        &self,
        fields: &[&str],
        line: usize,
        col: usize,
        name: &'static str,
    ) -> Result<u64, TraceError> {
        let v = fields.get(col).copied().unwrap_or("").trim();
        v.parse().map_err(|_| TraceError::Bad {
            what: self.what.to_string(),
            line,
            column: name,
            value: v.to_string(),
            expected: "a non-negative integer",
        })
    }
}

fn table<'a>(
    what: &'a str,
    text: &'a str,
) -> Result<(Table<'a>, impl Iterator<Item = (usize, Vec<&'a str>)>), TraceError> {
    let mut lines = text.lines().enumerate();
    let header = lines
        .next()
        .map(|(_, h)| h.split(',').collect())
        .ok_or_else(|| TraceError::Empty {
            what: what.to_string(),
        })?;
    let rows = lines
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.split(',').collect()));
    Ok((Table { what, header }, rows))
}

/// Parses a node list.
pub fn nodes(what: &str, text: &str) -> Result<Vec<Node>, TraceError> {
    let (t, rows) = table(what, text)?;
    let (sn, cpu, mem, gpu, model) = (
        t.col("sn")?,
        t.col("cpu_milli")?,
        t.col("memory_mib")?,
        t.col("gpu")?,
        t.col("model")?,
    );
    rows.map(|(line, f)| {
        Ok(Node::new(
            f.get(sn).copied().unwrap_or("").trim(),
            f.get(model).copied().unwrap_or("").trim(),
            t.num(&f, line, cpu, "cpu_milli")?,
            t.num(&f, line, mem, "memory_mib")?,
            t.num(&f, line, gpu, "gpu")? as usize,
        ))
    })
    .collect()
}

/// Parses a pod list.
pub fn pods(what: &str, text: &str) -> Result<Vec<Pod>, TraceError> {
    let (t, rows) = table(what, text)?;
    let (name, cpu, mem, num_gpu, gpu_milli) = (
        t.col("name")?,
        t.col("cpu_milli")?,
        t.col("memory_mib")?,
        t.col("num_gpu")?,
        t.col("gpu_milli")?,
    );
    let spec = t.col("gpu_spec").ok();
    rows.map(|(line, f)| {
        let num = t.num(&f, line, num_gpu, "num_gpu")? as u32;
        let milli = t.num(&f, line, gpu_milli, "gpu_milli")? as u32;
        if num == 1 && !(1..=GPU_MILLI).contains(&milli) {
            return Err(TraceError::Bad {
                what: t.what.to_string(),
                line,
                column: "gpu_milli",
                value: milli.to_string(),
                expected: "1..=1000 for a one-GPU pod",
            });
        }
        let gpu_spec = spec
            .and_then(|c| f.get(c))
            .map(|s| {
                s.split('|')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Pod {
            name: f.get(name).copied().unwrap_or("").trim().to_string(),
            cpu_milli: t.num(&f, line, cpu, "cpu_milli")?,
            memory_mib: t.num(&f, line, mem, "memory_mib")?,
            num_gpu: num,
            gpu_milli: if num == 1 { milli } else { 0 },
            gpu_spec,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_files_and_names_bad_values() {
        let n = nodes(
            "n.csv",
            "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,2,P100\n",
        )
        .unwrap();
        assert_eq!((n[0].gpus.len(), n[0].model.as_str()), (2, "P100"));
        let p = pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\nx,6000,12288,1,460,\ny,1000,10,8,1000,V100M16|V100M32\n",
        )
        .unwrap();
        assert_eq!(p[0].gpu_request_milli(), 460);
        assert_eq!(p[1].gpu_request_milli(), 8000);
        assert_eq!(p[1].gpu_spec, vec!["V100M16", "V100M32"]);
        let e = pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nx,lots,1,1,100\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.csv line 2: column cpu_milli is \"lots\", not a non-negative integer"
        );
        let e = pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nx,1,1,1,0\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("gpu_milli"), "{e}");
        assert!(matches!(
            nodes("n.csv", "sn,cpu\n"),
            Err(TraceError::NoColumn { .. })
        ));
    }
}
