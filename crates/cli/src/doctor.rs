//! `berth doctor [--fix] [--json]`: berthd's comparison of the host with
//! its records (leftovers, with why and the fix) and its host checks.
//! Exit 0: healthy; 1: findings left; 2: could not check.

use berth_api::v1 as pb;
use serde_json::json;

use crate::client::{Client, Failure};

/// The exit code of a doctor that could not look.
pub const COULD_NOT_CHECK: i32 = 2;

pub async fn run(c: &mut Client, fix: bool, json: bool) -> Result<i32, Failure> {
    let report = c
        .system
        .doctor(pb::DoctorRequest { fix })
        .await
        .map_err(|s| Failure { exit_code: COULD_NOT_CHECK, ..s.into() })?
        .into_inner();
    let left = report.findings.iter().filter(|f| !f.fixed).count();
    let broken = report.checks.iter().any(|c| c.status == "error");
    if json {
        let findings: Vec<_> = report
            .findings
            .iter()
            .map(|f| {
                json!({"kind": f.kind, "subject": f.subject, "explanation": f.explanation, "fix": f.fix,
                       "fixed": f.fixed, "fix_error": f.fix_error, "manual": f.manual})
            })
            .collect();
        let checks: Vec<_> =
            report.checks.iter().map(|c| json!({"name": c.name, "status": c.status, "detail": c.detail})).collect();
        println!("{}", json!({"findings": findings, "checks": checks, "healthy": left == 0 && !broken}));
    } else {
        for c in &report.checks {
            println!("{:<8} {:<22} {}", c.status, c.name, c.detail);
        }
        for f in &report.findings {
            let state = match (f.fixed, f.fix_error.is_empty(), f.manual) {
                (true, _, _) => "FIXED".to_string(),
                (false, false, _) => format!("NOT FIXED ({})", f.fix_error),
                (false, true, true) => "BY HAND".to_string(),
                (false, true, false) => "FOUND".to_string(),
            };
            println!("{state:<8} {} {}: {}; fix: {}", f.kind, f.subject, f.explanation, f.fix);
        }
        match left {
            0 if report.findings.is_empty() => println!("healthy: nothing berth's records do not account for"),
            0 => println!("healthy: {} leftover(s) repaired", report.findings.len()),
            n if fix => println!("{n} finding(s) left"),
            n => println!("{n} finding(s): `berth doctor --fix` repairs what is safe"),
        }
    }
    Ok(if broken {
        COULD_NOT_CHECK
    } else if left > 0 {
        1
    } else {
        0
    })
}
