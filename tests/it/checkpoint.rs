//! The accrual checkpoint through the real pipeline: an account's row keeps
//! its checkpoint at its last point, the worker loads only what follows it,
//! and a late snapshot before the checkpoint (inside the correction window)
//! still pays exactly what the full timeline pays (`simulate`).

use chrono::Duration as Dur;
use interest_now::money::types::format_instant;
use interest_now::simulate::Options;
use sqlx::Row;

use crate::harness::{now, Env};
use crate::support::{check, claim, flat_plan, plans};

fn snapshot_on(plan: &str, seq: u64, balance: &str, as_of: &str) -> String {
    format!(
        r#"{{"type":"snapshot","account_id":"cara","seq":{seq},"balance":"{balance}","currency":"KRW","as_of":"{as_of}","plan":"{plan}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_snapshot_before_the_checkpoint_pays_what_the_full_timeline_pays() {
    let plan_a = flat_plan("cp-a", "2.0", "ACT/365F", "continuous", "carry");
    let plan_b = flat_plan("cp-b", "3.5", "ACT/365F", "continuous", "carry");
    let env = Env::new(2).await;
    env.import_plans(&format!(r#"{{"plans":[{plan_a},{plan_b}]}}"#));
    let svc = env.serve("all", &[]).await;
    let base = chrono::DateTime::from_timestamp(now().timestamp(), 0).unwrap();
    let d = |h: i64| format_instant(base - Dur::hours(h) + Dur::milliseconds(250));
    // In arrival order; seq 3 comes last, before the checkpoint (the last point's second).
    let arrivals = [
        ("cp-a", 1, "50000000", d(120)),
        ("cp-b", 2, "70000000", d(100)),
        ("cp-a", 4, "90000000", d(50)),
        ("cp-a", 5, "10000000", d(30)),
        ("cp-b", 3, "123456789", d(70)),
    ];
    let mut script = Vec::new();
    for (i, (plan, seq, balance, as_of)) in arrivals.iter().enumerate() {
        env.snapshot_on(plan, "cara", *seq, balance, as_of).await;
        env.wait_count("SELECT count(*) FROM balance_points", i as i64 + 1)
            .await;
        script.push(snapshot_on(plan, *seq, balance, as_of));
        if i == 3 {
            let at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT checkpoint_at FROM accounts")
                .fetch_one(&env.pool)
                .await
                .unwrap();
            assert_eq!(
                format_instant(at),
                format_instant(base - Dur::hours(30)),
                "C = the last point's second"
            );
        }
    }
    let paid = svc.claim_to_end("cara", "c-1").await;
    assert_eq!(paid.status, 201, "{:?}", paid.body);
    script.push(claim("cara", paid.body["accepted_at"].as_str().unwrap(), "c-1"));
    let sim = check(plans(&[plan_a, plan_b]), Options::default(), &script);
    let expected = &sim.last().unwrap()["payout"];
    assert_eq!(
        paid.body["rates"].as_array().map(Vec::len),
        Some(2),
        "both plans: {:?}",
        paid.body
    );
    for field in [
        "gross",
        "net",
        "period_start",
        "period_end",
        "adjustment",
        "plan",
        "rates",
    ] {
        assert_eq!(paid.body[field], expected[field], "{field}");
    }
    let row = sqlx::query("SELECT checkpoint_at, paid_through, checkpoint_units::text AS u FROM accounts")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let (c, ps): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        (row.get("checkpoint_at"), row.get("paid_through"));
    assert_eq!(
        (c, row.get::<String, _>("u")),
        (ps, "0".to_owned()),
        "a payout restarts the checkpoint"
    );
    env.drop_db().await;
}
