//! Arbitrary SQL through the router of a sharded schema, with the plan cache
//! warm across inputs. Nothing may panic; a plan taken from the cache must
//! equal the plan of a fresh parse; a rewritten statement must parse again
//! whenever the client's did; a prepared statement routes for any values.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use tessera_core::config::Config;
use tessera_core::router::{Plan, PreparedRoute, Router};
use tessera_core::shard::Literal;

const SCHEMA: &str = r#"
listen = "127.0.0.1:3307"
[[users]]
name = "app"
password_native = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
[[nodes]]
name = "node1"
primary = "127.0.0.1:3306"
replicas = ["127.0.0.1:3308"]
user = "root"
[[nodes]]
name = "node2"
primary = "127.0.0.1:3316"
user = "root"
[schema]
broadcast = ["countries"]
sequence_database = "app"
[[schema.tables]]
name = "stu"
key = "id"
function = "hash"
locations = [4, 4]
sequence = "id"
[[schema.tables]]
name = "log"
key = "created"
function = "month"
date_ranges = ["2026-01..2026-06", "2026-07..2026-12"]
"#;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let v = Config::from_toml(SCHEMA)
            .expect("schema parses")
            .validate()
            .expect("schema validates");
        Router::new(v.topology, v.schema, v.blacklist)
    })
}

fn parses(sql: &str) -> bool {
    Parser::parse_sql(&MySqlDialect {}, sql).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let r = router();
    let cached = r.route(sql);
    let fresh = r.route_uncached(sql);
    assert_eq!(cached, fresh, "the plan cache disagrees on {sql:?}");
    if parses(sql) {
        let texts: Vec<&str> = match &fresh {
            Plan::Single { sql: Some(s), .. } => vec![s.as_str()],
            Plan::Scatter(s) => s.parts.iter().map(|p| p.sql.as_str()).collect(),
            _ => vec![],
        };
        for t in texts {
            assert!(parses(t), "{sql:?} was rewritten to {t:?}, which does not parse");
        }
    }
    if let PreparedRoute::Bound(b) = r.route_prepare(sql) {
        let _ = r.route_representative(&b);
        let values: Vec<Literal> = (0..b.params())
            .map(|i| match data.get(i).copied().unwrap_or(0) % 3 {
                0 => Literal::Null,
                1 => Literal::Number(i.to_string()),
                _ => Literal::Str(format!("2026-0{}-01", i % 9 + 1)),
            })
            .collect();
        let _ = r.route_bound(&b, &values);
    }
});
