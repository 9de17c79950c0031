use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::config::Config;
use crate::merge::{Agg, SortKey};

pub(crate) const SCHEMA: &str = r#"
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
[[schema.tables]]
name = "stu"
key = "id"
function = "hash"
locations = [4, 4]
[blacklist]
unfiltered_writes = true
patterns = ["SELECT * FROM secrets"]
"#;

pub(crate) fn router() -> Router {
    let v = Config::from_toml(SCHEMA).unwrap().validate().unwrap();
    Router::new(v.topology, v.schema, v.blacklist)
}

fn single(p: &Plan) -> (usize, Access, String) {
    match p {
        Plan::Single {
            node, access, sql, ..
        } => (*node, *access, sql.clone().unwrap_or_default()),
        other => panic!("expected a single-node plan, got {other:?}"),
    }
}

fn scatter(p: Plan) -> ScatterPlan {
    match p {
        Plan::Scatter(s) => *s,
        other => panic!("expected a scatter plan, got {other:?}"),
    }
}

fn refused(p: &Plan) -> &str {
    match p {
        Plan::Refuse { message, .. } => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn unsharded_statements_keep_their_text_and_split_reads_from_writes() {
    let r = router();
    assert_eq!(
        r.route("SELECT * FROM t WHERE a = 1"),
        Plan::Single {
            node: 0,
            access: Access::Read,
            sql: None,
            table_names: vec![],
        }
    );
    assert_eq!(
        single(&r.route("select * from t for update")).1,
        Access::Write
    );
    assert_eq!(
        single(&r.route("SELECT * FROM t LOCK IN SHARE MODE")).1,
        Access::Write
    );
    assert_eq!(
        single(&r.route("UPDATE t SET a = 1 WHERE b = 2")).1,
        Access::Write
    );
    assert_eq!(r.route("SELECT LAST_INSERT_ID()"), Plan::Sticky);
    assert_eq!(r.route("SELECT @x"), Plan::Sticky);
    assert_eq!(single(&r.route("SELECT @@version")).1, Access::Read);
    assert_eq!(r.route("SHOW WARNINGS"), Plan::Sticky);
    assert_eq!(r.route("SET autocommit = 0"), Plan::Sticky);
    assert_eq!(r.route("begin"), Plan::Begin);
    assert_eq!(r.route("START TRANSACTION READ ONLY"), Plan::Begin);
    assert_eq!(r.route("COMMIT"), Plan::Commit);
    assert_eq!(r.route("ROLLBACK"), Plan::Rollback);
    assert_eq!(r.route("ROLLBACK TO SAVEPOINT a"), Plan::Sticky);
}

#[test]
fn hints_force_the_primary_or_a_node() {
    let r = router();
    assert_eq!(
        single(&r.route("/*master*/ SELECT * FROM t")).1,
        Access::Write
    );
    assert_eq!(
        single(&r.route("SELECT /*+ master */ * FROM t")).1,
        Access::Write
    );
    let (node, access, _) = single(&r.route("/*node2*/ SELECT * FROM t"));
    assert_eq!((node, access), (1, Access::Read));
    let (_, access, sql) = single(&r.route("/*master*/ SELECT * FROM stu WHERE id = 5"));
    assert_eq!(access, Access::Write);
    assert_eq!(
        sql,
        "/*master*/ SELECT * FROM stu_0005 AS `stu` WHERE id = 5"
    );
}

#[test]
fn a_point_select_goes_to_its_sub_table_with_the_logical_name_as_alias() {
    let r = router();
    let (node, access, sql) = single(&r.route("SELECT stu.name FROM stu WHERE stu.id = 3"));
    assert_eq!((node, access), (0, Access::Read));
    assert_eq!(
        sql,
        "SELECT stu.name FROM stu_0003 AS `stu` WHERE stu.id = 3"
    );
    let (node, _, sql) =
        single(&r.route("select s.name from `stu` s where s.id = '-2882' and s.x > 1"));
    assert_eq!(node, 1);
    assert_eq!(
        sql,
        "select s.name from `stu_0006` s where s.id = '-2882' and s.x > 1"
    );
    // The same key routes the same way in every statement kind.
    let (n1, _, _) = single(&r.route("UPDATE stu SET name = 'x' WHERE id = 12"));
    let (n2, _, s2) = single(&r.route("DELETE FROM stu WHERE stu.id = 12"));
    let (n3, _, s3) = single(&r.route("INSERT INTO stu (id, name) VALUES (12, 'a')"));
    assert_eq!((n1, n2, n3), (1, 1, 1));
    assert_eq!(s2, "DELETE FROM stu_0004 WHERE stu_0004.id = 12");
    assert_eq!(s3, "INSERT INTO stu_0004 (id, name) VALUES (12, 'a')");
}

#[test]
fn in_lists_and_ranges_reach_exactly_their_sub_tables() {
    let r = router();
    let s = scatter(r.route("SELECT * FROM stu WHERE id IN (1, 9, 2)"));
    let subs: Vec<&str> = s.parts.iter().map(|p| &p.sql[14..22]).collect();
    assert_eq!(subs, vec!["stu_0001", "stu_0002"]);
    let s = scatter(r.route("SELECT * FROM stu WHERE id BETWEEN 3 AND 5 OR id = 7"));
    assert_eq!(s.parts.len(), 4);
    let s = scatter(r.route("SELECT * FROM stu WHERE name = 'x'"));
    assert_eq!(s.parts.len(), 8);
    assert_eq!(s.parts.iter().filter(|p| p.node == 1).count(), 4);
    let (_, _, sql) = single(&r.route("SELECT * FROM stu WHERE id = 1 AND id IN (1, 2)"));
    assert!(sql.contains("stu_0001"));
}

#[test]
fn scatter_selects_carry_what_the_merge_needs() {
    let r = router();
    let s = scatter(r.route("SELECT name, COUNT(*), AVG(score) FROM stu GROUP BY name HAVING COUNT(*) > 1 ORDER BY 2 DESC LIMIT 5"));
    assert_eq!(
        s.parts[0].sql,
        "SELECT SUM(score), COUNT(score), name, COUNT(*), AVG(score) FROM stu_0000 AS `stu` GROUP BY name  ORDER BY 2 DESC "
    );
    let ScatterMerge::Rows(m) = &s.merge else {
        panic!()
    };
    assert_eq!(m.hidden, 2);
    assert_eq!(m.group_by, vec![2]);
    assert!(m.aggregates.contains(&(3, Agg::Count)));
    assert!(m.aggregates.contains(&(4, Agg::Avg { sum: 0, count: 1 })));
    assert_eq!(
        m.order_by,
        vec![SortKey {
            column: 3,
            desc: true
        }]
    );
    assert_eq!(m.limit, Some(5));

    let s =
        scatter(r.route("SELECT id, name FROM stu ORDER BY score DESC, `stu`.name LIMIT 10, 5"));
    assert_eq!(
        s.parts[7].sql,
        "SELECT score, `stu`.name, id, name FROM stu_0007 AS `stu` ORDER BY score DESC, `stu`.name LIMIT 15"
    );
    let ScatterMerge::Rows(m) = &s.merge else {
        panic!()
    };
    assert_eq!((m.offset, m.limit, m.hidden), (10, Some(5), 2));
    assert_eq!(
        m.order_by,
        vec![
            SortKey {
                column: 0,
                desc: true
            },
            SortKey {
                column: 1,
                desc: false
            }
        ]
    );
}

#[test]
fn unmergeable_shapes_are_refused_by_name() {
    let r = router();
    assert!(
        refused(&r.route("SELECT SUM(score) * 2 FROM stu")).contains("Expressions over aggregates")
    );
    assert!(refused(&r.route("SELECT COUNT(DISTINCT name) FROM stu")).contains("DISTINCT"));
    assert!(
        refused(&r.route("SELECT * FROM stu a JOIN stu b ON a.id = b.id"))
            .contains("Joins between sharded")
    );
    assert!(
        refused(&r.route("SELECT * FROM t WHERE x IN (SELECT id FROM stu)")).contains("subquery")
    );
    assert!(
        refused(&r.route("SELECT name, ROW_NUMBER() OVER (ORDER BY id) FROM stu"))
            .contains("Window")
    );
    assert!(refused(&r.route("SELECT id FROM stu UNION SELECT id FROM t")).contains("UNION"));
    assert!(refused(&r.route("UPDATE stu SET id = 3 WHERE id = 2")).contains("shard key"));
    assert!(refused(&r.route("INSERT INTO stu VALUES (1, 'a')")).contains("must list its columns"));
    assert!(refused(&r.route("SELECT * FROM stu JOIN t ON stu.x = t.x")).contains("broadcast"));
    // COUNT(DISTINCT key) is disjoint per sub-table, so it sums.
    assert!(matches!(
        r.route("SELECT COUNT(DISTINCT id) FROM stu"),
        Plan::Scatter(_)
    ));
}

#[test]
fn multi_row_inserts_split_per_sub_table_atomically() {
    let r = router();
    let s = scatter(r.route("INSERT INTO stu (id, name) VALUES (1, 'a'), (5, 'e'), (9, 'i') ON DUPLICATE KEY UPDATE name = VALUES(name)"));
    assert_eq!(s.merge, ScatterMerge::Writes { atomic: true });
    assert_eq!(
        s.parts.iter().map(|p| (p.node, p.sql.as_str())).collect::<Vec<_>>(),
        vec![
            (0, "INSERT INTO stu_0001 (id, name) VALUES (1, 'a'), (9, 'i') ON DUPLICATE KEY UPDATE name = VALUES(name)"),
            (1, "INSERT INTO stu_0005 (id, name) VALUES (5, 'e') ON DUPLICATE KEY UPDATE name = VALUES(name)"),
        ]
    );
}

#[test]
fn ddl_and_broadcast_writes_reach_every_copy() {
    let r = router();
    let s = scatter(r.route("CREATE TABLE stu (id BIGINT PRIMARY KEY, name VARCHAR(20))"));
    assert_eq!(s.parts.len(), 8);
    assert_eq!(
        s.parts[5].sql,
        "CREATE TABLE stu_0005 (id BIGINT PRIMARY KEY, name VARCHAR(20))"
    );
    assert_eq!(s.parts[5].node, 1);
    let s = scatter(r.route("INSERT INTO countries (code) VALUES ('fr')"));
    assert_eq!(s.parts.len(), 2);
    let (node, access, sql) =
        single(&r.route("SELECT * FROM stu JOIN countries c ON c.code = stu.cc WHERE stu.id = 6"));
    assert_eq!((node, access), (1, Access::Read));
    assert!(sql.contains("stu_0006 AS `stu` JOIN countries c"));
    assert_eq!(single(&r.route("SELECT * FROM countries")).1, Access::Read);
}

#[test]
fn blacklist_and_explain() {
    let r = router();
    assert!(refused(&r.route("DELETE FROM t")).contains("without WHERE"));
    assert!(refused(&r.route("select *  from secrets")).contains("blacklist"));
    let Plan::Explain(inner) = r.route("TESSERA EXPLAIN SELECT * FROM stu WHERE id = 1") else {
        panic!()
    };
    let rows = explain_rows(&r, &r.route(&inner));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "node1");
}

#[test]
fn unparsable_statements_are_still_served() {
    let r = router();
    assert_eq!(
        single(&r.route("LOAD DATA LOCAL INFILE 'x' INTO TABLE t")).1,
        Access::Write
    );
    let (_, access, sql) = single(&r.route("SELECT * FROM stu WHERE id = 2 LOCK IN SHARE MODE"));
    assert_eq!(access, Access::Write);
    assert_eq!(
        sql,
        "SELECT * FROM stu_0002 AS `stu` WHERE id = 2 LOCK IN SHARE MODE"
    );
}

fn key_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i32>().prop_map(|k| k.to_string()),
        any::<i32>().prop_map(|k| format!("'{k}'")),
        Just("NULL".to_string()),
        Just("?".to_string()),
        "[a-z]{1,4}".prop_map(|s| format!("'{s}'")),
    ]
}

fn statement() -> impl Strategy<Value = String> {
    let cond = prop_oneof![
        key_literal().prop_map(|v| format!("id = {v}")),
        proptest::collection::vec(key_literal(), 1..4)
            .prop_map(|v| format!("id IN ({})", v.join(", "))),
        (any::<i16>(), any::<i8>())
            .prop_map(|(a, w)| format!("id BETWEEN {a} AND {}", a as i32 + w as i32)),
        any::<i16>().prop_map(|a| format!("stu.id > {a}")),
        Just("name = 'x'".to_string()),
    ];
    let conds = proptest::collection::vec(cond, 0..3).prop_map(|c| {
        if c.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", c.join(" AND "))
        }
    });
    let select_list = prop_oneof![
        Just("*"),
        Just("id, name"),
        Just("COUNT(*)"),
        Just("name, SUM(score), AVG(score)"),
        Just("MAX(id) - MIN(id)"),
        Just("DISTINCT name"),
    ];
    let tail = prop_oneof![
        Just(""),
        Just(" ORDER BY name"),
        Just(" ORDER BY 1 DESC LIMIT 3"),
        Just(" GROUP BY name"),
        Just(" GROUP BY name HAVING COUNT(*) > 1"),
        Just(" LIMIT 2, 2"),
    ];
    prop_oneof![
        (select_list, conds.clone(), tail)
            .prop_map(|(s, c, t)| format!("SELECT {s} FROM stu{c}{t}")),
        conds
            .clone()
            .prop_map(|c| format!("UPDATE stu SET name = 'y'{c}")),
        conds.prop_map(|c| format!("DELETE FROM stu{c}")),
        proptest::collection::vec(key_literal(), 1..5).prop_map(|keys| {
            let rows: Vec<String> = keys.iter().map(|k| format!("({k}, 'n')")).collect();
            format!("INSERT INTO stu (id, name) VALUES {}", rows.join(", "))
        }),
    ]
}

proptest! {
    #[test]
    fn plans_never_panic_and_rewrites_reparse(sql in statement()) {
        let r = router();
        let plan = r.route(&sql);
        let texts: Vec<String> = match &plan {
            Plan::Single { sql: Some(s), .. } => vec![s.clone()],
            Plan::Scatter(s) => s.parts.iter().map(|p| p.sql.clone()).collect(),
            _ => vec![],
        };
        for t in texts {
            prop_assert!(sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::MySqlDialect {}, &t).is_ok(), "{t}");
            // Only table names change: the logical name survives solely as an alias.
            let stripped = t.replace("AS `stu`", "");
            prop_assert!(!stripped.contains(" stu ") && !stripped.ends_with(" stu"), "{t}");
        }
    }

    #[test]
    fn a_cached_shape_plans_exactly_as_a_fresh_parse(sql in statement(), again in statement()) {
        // One router for both, so the second statement often hits a shape the first cached.
        let r = router();
        for s in [&sql, &again, &sql] {
            prop_assert_eq!(r.route(s), r.route_uncached(s), "{}", s);
        }
    }

    #[test]
    fn a_point_key_lands_on_exactly_one_sub_table(k in any::<i64>()) {
        let r = router();
        let t = r.schema.sharded("stu").unwrap().clone();
        let want = &t.sub_tables[(k as i128).rem_euclid(8) as usize];
        for sql in [
            format!("SELECT * FROM stu WHERE id = {k}"),
            format!("SELECT * FROM stu WHERE id = '{k}'"),
            format!("UPDATE stu SET name = 'a' WHERE id = {k}"),
            format!("DELETE FROM stu WHERE id IN ({k})"),
            format!("INSERT INTO stu (name, id) VALUES ('a', {k})"),
        ] {
            let (node, _, text) = single(&r.route(&sql));
            prop_assert_eq!(node, want.node);
            prop_assert!(text.contains(&want.name), "{}", text);
        }
    }
}

#[test]
fn statements_of_one_shape_share_a_parse_and_keep_their_own_text() {
    let r = router();
    let (n1, _, s1) =
        single(&r.route("SELECT name FROM stu /*c*/ WHERE id = 3 AND name = 'it''s'"));
    let (n2, _, s2) =
        single(&r.route("SELECT name FROM stu /*c*/ WHERE id = 12345 AND name = 'x'"));
    assert_eq!(r.cache.len(), 1);
    assert_eq!(
        s1,
        "SELECT name FROM stu_0003 AS `stu` /*c*/ WHERE id = 3 AND name = 'it''s'"
    );
    assert_eq!(
        s2,
        "SELECT name FROM stu_0001 AS `stu` /*c*/ WHERE id = 12345 AND name = 'x'"
    );
    assert_eq!((n1, n2), (0, 0));
    // A shape that fans out for these values is planned from its own parse.
    let s = scatter(r.route("SELECT name FROM stu /*c*/ WHERE id > 3 AND name = 'x'"));
    assert_eq!(s.parts.len(), 8);
    let m = r.route("UPDATE stu SET name = 'a' WHERE id = 9");
    assert_eq!(
        single(&m).2,
        "UPDATE stu_0001 AS `stu` SET name = 'a' WHERE id = 9"
    );
}

#[test]
fn prepared_statements_over_sharded_tables_route_by_their_parameters() {
    use crate::router::PreparedRoute;
    use crate::shard::Literal;
    let r = router();
    let PreparedRoute::Bound(b) =
        r.route_prepare("SELECT name FROM stu WHERE name <> ? AND id = ? FOR UPDATE")
    else {
        panic!("expected a bound route");
    };
    assert_eq!(b.params(), 2);
    let values = [Literal::Str("x".into()), Literal::Number("13".into())];
    let (node, access, sql) = single(&r.route_bound(&b, &values));
    assert_eq!((node, access), (1, Access::Write));
    assert_eq!(
        sql,
        "SELECT name FROM stu_0005 AS `stu` WHERE name <> ? AND id = ? FOR UPDATE"
    );
    let values = [Literal::Null, Literal::Str("-2882".into())];
    assert!(single(&r.route_bound(&b, &values)).2.contains("stu_0006"));
    // Without a key the statement fans out; the session refuses that for prepared statements.
    let PreparedRoute::Bound(b) = r.route_prepare("SELECT COUNT(*) FROM stu WHERE name = ?") else {
        panic!("expected a bound route");
    };
    assert!(matches!(
        r.route_bound(&b, &[Literal::Str("a".into())]),
        Plan::Scatter(_)
    ));
    // Unsharded statements keep a fixed plan.
    assert!(matches!(
        r.route_prepare("SELECT * FROM t WHERE a = ?"),
        PreparedRoute::Fixed(Plan::Single { sql: None, .. })
    ));
    let PreparedRoute::Bound(b) = r.route_prepare("INSERT INTO stu (id, name) VALUES (?, ?)")
    else {
        panic!("expected a bound route");
    };
    let values = [Literal::Number("9".into()), Literal::Str("n".into())];
    assert_eq!(
        single(&r.route_bound(&b, &values)).2,
        "INSERT INTO stu_0001 (id, name) VALUES (?, ?)"
    );
}

fn single_unrewritten(p: &Plan) -> usize {
    match p {
        Plan::Single {
            node, sql: None, ..
        } => *node,
        other => panic!("expected the statement as sent, got {other:?}"),
    }
}

#[test]
fn describing_a_sharded_table_asks_its_first_sub_table() {
    let r = router();
    for (sql, want) in [
        ("DESCRIBE stu", "DESCRIBE stu_0000"),
        ("desc `stu`", "desc `stu_0000`"),
        (
            "SHOW FULL COLUMNS FROM stu",
            "SHOW FULL COLUMNS FROM stu_0000",
        ),
        ("SHOW CREATE TABLE stu", "SHOW CREATE TABLE stu_0000"),
    ] {
        let (node, access, text) = single(&r.route(sql));
        assert_eq!(
            (node, access, text.as_str()),
            (0, Access::Read, want),
            "{sql}"
        );
    }
    assert!(refused(&r.route(
        "LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE `tessera`.`stu` FIELDS TERMINATED BY ','"
    ))
    .contains("LOAD DATA"));
    assert_eq!(
        single_unrewritten(&r.route("LOAD DATA LOCAL INFILE 'x' INTO TABLE t")),
        0
    );
    // Unsharded tables are described where they live, as sent.
    assert_eq!(single_unrewritten(&r.route("DESCRIBE t")), 0);
}

/// Found by the `sql` fuzz target: hidden columns were glued to a SELECT
/// written without a space before its first item (`SELECTname, (e)`).
#[test]
fn hidden_columns_keep_off_a_select_without_a_space() {
    let r = router();
    let s = scatter(r.route("SELECT(score) FROM stu WHERE id IN (2, 9) GROUP BY name"));
    let t = &s.parts[0].sql;
    assert!(t.starts_with("SELECT name, (score) FROM stu_0001"), "{t}");
    assert!(sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::MySqlDialect {}, t).is_ok());
}

/// Found by the `sql` fuzz target: sqlparser reads `ORDER(*)` as a call,
/// so the HAVING cut stopped at its `ORDER`; a shard query that does not
/// parse is refused rather than sent.
#[test]
fn a_shard_query_that_would_not_parse_is_refused() {
    let r = router();
    let sql = "SELECT name, AVG(score) FROM stu WHERE id IN (1, 9, 2) GROUP BY name HAVING ORDER(*) > 0 ORDER BY 2 DESC LIMIT 5";
    assert!(refused(&r.route(sql)).contains("could not be rewritten"));
}

/// Found by the `sql` fuzz target: a prepare of nothing but a comment that
/// names a sharded table parsed to no statement, and the router panicked.
#[test]
fn a_prepare_that_parses_to_no_statement_is_refused() {
    let r = router();
    for sql in [
        "--\tLESCRI9999BE \t-HFstu",
        "/* stu */",
        "SELECT 1 FROM stu; SELECT 2",
    ] {
        match r.route_prepare(sql) {
            crate::router::PreparedRoute::Fixed(Plan::Refuse { .. }) => {}
            crate::router::PreparedRoute::Fixed(_) => {}
            other => panic!("{sql:?}: {other:?}"),
        }
    }
}

/// Found by the `sql` fuzz target: `'it''s'. 1.5` does not parse, but its
/// shape `?. ?` did, so the plan cache routed to a shard what a fresh parse
/// sends unsharded. A literal beside a dot now has no shape.
#[test]
fn a_literal_beside_a_dot_is_parsed_as_sent() {
    let r = router();
    for sql in [
        "SELECT 'it''s'. 1.5,___________________b_______ -w3 FROM stu WHERE id = 7 /* c */",
        "SELECT 'a' .1 FROM stu WHERE id = 7",
        "SELECT 1 . 'a' FROM stu WHERE id = 7",
        "SELECT x. 1 FROM stu WHERE id = 7",
    ] {
        assert_eq!(r.route(sql), r.route_uncached(sql), "{sql}");
        assert_eq!(r.route(sql), r.route_uncached(sql), "{sql} (cache warm)");
    }
}

#[test]
fn router_is_cheap_to_share() {
    let r = Arc::new(router());
    let r2 = r.clone();
    assert_eq!(r2.default_node(), 0);
}

// ------------------------------------------------------------- sequences

/// `stu` gets its `id` from a sequence; `orders` is sharded by `user_id`
/// and gets `order_id` from one.
pub(crate) const SEQ_SCHEMA: &str = r#"
listen = "127.0.0.1:3307"
[[users]]
name = "app"
password_native = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
[[nodes]]
name = "node1"
primary = "127.0.0.1:3306"
user = "root"
[[nodes]]
name = "node2"
primary = "127.0.0.1:3316"
user = "root"
[schema]
sequence_database = "app"
[[schema.tables]]
name = "stu"
key = "id"
function = "hash"
locations = [4, 4]
sequence = "id"
[[schema.tables]]
name = "orders"
key = "user_id"
function = "hash"
locations = [4, 4]
sequence = "order_id"
sequence_block = 50
"#;

fn seq_router() -> Router {
    let v = Config::from_toml(SEQ_SCHEMA).unwrap().validate().unwrap();
    Router::new(v.topology, v.schema, v.blacklist)
}

fn sequence(p: Plan) -> SequenceInsert {
    match p {
        Plan::Sequence(s) => *s,
        other => panic!("expected a sequence insert, got {other:?}"),
    }
}

fn parts(p: &Plan) -> Vec<(usize, String)> {
    match p {
        Plan::Single {
            node, sql: Some(s), ..
        } => vec![(*node, s.clone())],
        Plan::Scatter(s) => s.parts.iter().map(|p| (p.node, p.sql.clone())).collect(),
        other => panic!("expected a write plan, got {other:?}"),
    }
}

#[test]
fn a_left_out_sequence_column_is_added_and_filled() {
    let r = seq_router();
    let seq = sequence(r.route("INSERT INTO stu (name, score) VALUES ('a', 1)"));
    assert_eq!((seq.table.as_str(), seq.column.as_str()), ("stu", "id"));
    assert_eq!(seq.wanted(false), 1);
    let f = seq.fill(&r.schema, &[12], false).unwrap();
    assert_eq!(
        parts(&f.plan),
        vec![(
            1,
            "INSERT INTO stu_0004 (name, score, `id`) VALUES ('a', 1, LAST_INSERT_ID(12))".into()
        )]
    );
    assert_eq!((f.first_id, f.first_node), (Some(12), Some(1)));
    // Quoting, comments and spacing stay as the client wrote them.
    let seq = sequence(r.route("/* app */ insert  into `stu` ( `name` ) /* rows */ values('x')"));
    let f = seq.fill(&r.schema, &[3], false).unwrap();
    assert_eq!(
        parts(&f.plan)[0].1,
        "/* app */ insert  into `stu_0003` ( `name`, `id` ) /* rows */ values('x', LAST_INSERT_ID(3))"
    );
    // REPLACE too.
    let seq = sequence(r.route("REPLACE INTO stu (name) VALUES ('r')"));
    let f = seq.fill(&r.schema, &[8], false).unwrap();
    assert_eq!(
        parts(&f.plan)[0].1,
        "REPLACE INTO stu_0000 (name, `id`) VALUES ('r', LAST_INSERT_ID(8))"
    );
}

#[test]
fn multi_row_inserts_are_routed_by_their_generated_ids() {
    let r = seq_router();
    let seq = sequence(r.route(
        "INSERT INTO stu (name) VALUES ('a'), ('b'), ('c') ON DUPLICATE KEY UPDATE name = VALUES(name)",
    ));
    assert_eq!(seq.wanted(false), 3);
    assert!(seq.fill(&r.schema, &[1, 2], false).is_err(), "too few ids");
    let f = seq.fill(&r.schema, &[5, 6, 13], false).unwrap();
    let Plan::Scatter(s) = &f.plan else {
        panic!("{:?}", f.plan)
    };
    assert_eq!(s.merge, ScatterMerge::Writes { atomic: true });
    assert_eq!(
        parts(&f.plan),
        vec![
            (1, "INSERT INTO stu_0005 (name, `id`) VALUES ('a', LAST_INSERT_ID(5)), ('c', 13) ON DUPLICATE KEY UPDATE name = VALUES(name)".into()),
            (1, "INSERT INTO stu_0006 (name, `id`) VALUES ('b', 6) ON DUPLICATE KEY UPDATE name = VALUES(name)".into()),
        ]
    );
    assert_eq!((f.first_id, f.first_node), (Some(5), Some(1)));
}

#[test]
fn explicit_values_are_kept_and_null_or_zero_is_filled() {
    let r = seq_router();
    // Every row gives its id: no sequence, the usual plan.
    assert_eq!(
        parts(&r.route("INSERT INTO stu (id, name) VALUES (7, 'x')")),
        vec![(1, "INSERT INTO stu_0007 (id, name) VALUES (7, 'x')".into())]
    );
    let seq =
        sequence(r.route("INSERT INTO stu (id, name) VALUES (NULL, 'a'), (3, 'b'), (0, 'c')"));
    assert_eq!((seq.wanted(false), seq.wanted(true)), (2, 1));
    let f = seq.fill(&r.schema, &[9, 10], false).unwrap();
    assert_eq!(
        parts(&f.plan),
        vec![
            (
                0,
                "INSERT INTO stu_0001 (id, name) VALUES (LAST_INSERT_ID(9), 'a')".into()
            ),
            (0, "INSERT INTO stu_0002 (id, name) VALUES (10, 'c')".into()),
            (0, "INSERT INTO stu_0003 (id, name) VALUES (3, 'b')".into()),
        ]
    );
    // NO_AUTO_VALUE_ON_ZERO: the 0 stays, and goes where 0 belongs.
    let f = seq.fill(&r.schema, &[9], true).unwrap();
    assert_eq!(
        parts(&f.plan),
        vec![
            (0, "INSERT INTO stu_0000 (id, name) VALUES (0, 'c')".into()),
            (
                0,
                "INSERT INTO stu_0001 (id, name) VALUES (LAST_INSERT_ID(9), 'a')".into()
            ),
            (0, "INSERT INTO stu_0003 (id, name) VALUES (3, 'b')".into()),
        ]
    );
    assert_eq!(
        seq.known_nodes(&r.schema, false)
            .into_iter()
            .collect::<Vec<_>>(),
        vec![0]
    );
}

#[test]
fn a_sequence_on_another_column_fills_it_and_routes_by_the_key() {
    let r = seq_router();
    let seq = sequence(r.route("INSERT INTO orders (user_id, item) VALUES (5, 'x'), (6, 'y')"));
    assert!(!seq.routes_by_id);
    assert_eq!(seq.node_of(&r.schema, 3), None);
    let f = seq.fill(&r.schema, &[100, 101], false).unwrap();
    assert_eq!(
        parts(&f.plan),
        vec![
            (1, "INSERT INTO orders_0005 (user_id, item, `order_id`) VALUES (5, 'x', LAST_INSERT_ID(100))".into()),
            (1, "INSERT INTO orders_0006 (user_id, item, `order_id`) VALUES (6, 'y', 101)".into()),
        ]
    );
    // The shard key is still needed.
    assert!(refused(&r.route("INSERT INTO orders (item) VALUES ('x')")).contains("user_id"));
}

#[test]
fn insert_select_into_a_sequenced_table_is_refused_and_explain_allocates_nothing() {
    let r = seq_router();
    match r.route("INSERT INTO stu (name) SELECT name FROM t") {
        Plan::Refuse { code, message } => {
            assert_eq!(code, ER_NOT_SUPPORTED);
            assert!(message.contains("INSERT ... SELECT"), "{message}");
            assert!(message.contains("sequence"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let Plan::Explain(inner) =
        r.route("TESSERA EXPLAIN INSERT INTO stu (name) VALUES ('a'), ('b')")
    else {
        panic!()
    };
    let rows = explain_rows(&r, &r.route(&inner));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "(each row's generated id)");
    assert_eq!(
        rows[0][2],
        "INSERT INTO stu_<sub-table> (name, `id`) VALUES ('a', <next stu.id>), ('b', <next stu.id>)"
    );
    assert!(
        rows[0][3].contains("app.tessera_sequences"),
        "{}",
        rows[0][3]
    );
    // Rows routed by another key show their sub-tables.
    let rows = explain_rows(&r, &r.route("INSERT INTO orders (user_id) VALUES (1), (4)"));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], "node2");
    assert!(rows[1][2].contains("orders_0004"), "{:?}", rows[1]);
    // Prepared-statement style placeholders are not literals.
    assert!(refused(&r.route("INSERT INTO stu (id, name) VALUES (?, 'a')")).contains("literal"));
}

#[test]
fn sequence_config_mistakes_name_their_key() {
    let check = |from: &str, to: &str, key: &str| {
        let c = Config::from_toml(&SEQ_SCHEMA.replace(from, to)).unwrap();
        assert_eq!(c.validate().unwrap_err().key, key, "{from} -> {to}");
    };
    check(
        "sequence_database = \"app\"",
        "",
        "schema.sequence_database",
    );
    check(
        "sequence_database = \"app\"",
        "sequence_database = \"a`b\"",
        "schema.sequence_database",
    );
    check(
        "sequence_block = 50",
        "sequence_block = 0",
        "schema.tables[1].sequence_block",
    );
    check(
        "sequence_database = \"app\"",
        "sequence_database = \"app\"\nsequence_block = 0",
        "schema.sequence_block",
    );
    check(
        "sequence = \"id\"",
        "sequence = \"\"",
        "schema.tables[0].sequence",
    );
    check(
        "sequence = \"id\"",
        "sequence_block = 5",
        "schema.tables[0].sequence_block",
    );
    let v = Config::from_toml(SEQ_SCHEMA).unwrap().validate().unwrap();
    assert_eq!(v.schema.sharded("stu").unwrap().sequence_block, 1000);
    assert_eq!(v.schema.sharded("orders").unwrap().sequence_block, 50);
    assert_eq!(v.schema.sequence_database.as_deref(), Some("app"));
}

fn seq_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("NULL".to_string())),
        Just(Some("0".to_string())),
        (1i64..1000).prop_map(|k| Some(k.to_string())),
    ]
}

proptest! {
    /// Filled inserts reparse, keep every row once, and put each row on the
    /// sub-table its id hashes to.
    #[test]
    fn filled_inserts_reparse_and_keep_every_row(
        values in proptest::collection::vec(seq_value(), 1..8),
        omit in any::<bool>(),
        first in 1i64..1_000_000,
    ) {
        let r = seq_router();
        let sql = if omit {
            let rows: Vec<String> = values.iter().enumerate().map(|(i, _)| format!("('n{i}')")).collect();
            format!("INSERT INTO stu (name) VALUES {}", rows.join(", "))
        } else {
            let rows: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("('n{i}', {})", v.as_deref().unwrap_or("NULL"))).collect();
            format!("INSERT INTO stu (name, id) VALUES {}", rows.join(", "))
        };
        let plan = r.route(&sql);
        let mut generated = 0;
        let plan = match plan {
            Plan::Sequence(seq) => {
                generated = seq.wanted(false);
                let ids: Vec<i64> = (0..generated as i64).map(|k| first + 2 * k).collect();
                seq.fill(&r.schema, &ids, false).unwrap().plan
            }
            p => p,
        };
        let mut seen = 0;
        let mut marked = 0;
        for (node, text) in parts(&plan) {
            let stmts = sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::MySqlDialect {}, &text);
            prop_assert!(stmts.is_ok(), "{}", text);
            let sub: usize = text["INSERT INTO stu_".len().."INSERT INTO stu_".len() + 4].parse().unwrap();
            prop_assert_eq!(node, sub / 4);
            seen += text.matches("'n").count();
            marked += text.matches("LAST_INSERT_ID(").count();
        }
        prop_assert_eq!(seen, values.len());
        // Only the first generated value sets the insert id.
        prop_assert_eq!(marked, usize::from(generated > 0));
    }
}

#[test]
fn schema_qualified_tables_and_columns_are_rewritten() {
    let r = router();
    // `db.stu` keeps its database; the alias keeps `stu.col` working and a
    // `db.stu.col` drops its database part (an aliased table is known only
    // by its alias).
    let (node, _, sql) = single(&r.route(
        "SELECT tessera.stu.name, stu.id FROM tessera.stu WHERE tessera.stu.id = 3 ORDER BY tessera.stu.score",
    ));
    assert_eq!(node, 0);
    assert_eq!(
        sql,
        "SELECT stu.name, stu.id FROM tessera.stu_0003 AS `stu` WHERE stu.id = 3 ORDER BY stu.score"
    );
    let (_, _, sql) =
        single(&r.route("SELECT `tessera`.`stu`.* FROM `tessera`.`stu` WHERE id = 5"));
    assert_eq!(
        sql,
        "SELECT `stu`.* FROM `tessera`.`stu_0005` AS `stu` WHERE id = 5"
    );
    // Another database's `stu` in a column is not this table: left as written.
    let (_, _, sql) = single(&r.route("SELECT other.stu.id FROM tessera.stu WHERE id = 5"));
    assert_eq!(
        sql,
        "SELECT other.stu.id FROM tessera.stu_0005 AS `stu` WHERE id = 5"
    );
    // Cross-shard: the hidden sort column is spelled the same way.
    let s = scatter(
        r.route("SELECT tessera.stu.id FROM tessera.stu ORDER BY tessera.stu.score DESC LIMIT 2"),
    );
    assert_eq!(
        s.parts[1].sql,
        "SELECT stu.score, stu.id FROM tessera.stu_0001 AS `stu` ORDER BY stu.score DESC LIMIT 2"
    );
    let s = scatter(r.route("SELECT AVG(tessera.stu.score) FROM tessera.stu"));
    assert!(
        s.parts[0]
            .sql
            .starts_with("SELECT SUM(stu.score), COUNT(stu.score), AVG(stu.score) AS `AVG(tessera.stu.score)` FROM tessera.stu_0000 AS `stu`"),
        "{}",
        s.parts[0].sql
    );

    // UPDATE is aliased like SELECT.
    let (_, _, sql) = single(&r.route(
        "UPDATE tessera.stu SET tessera.stu.name = 'x', stu.score = tessera.stu.score + 1 WHERE tessera.stu.id = 12",
    ));
    assert_eq!(
        sql,
        "UPDATE tessera.stu_0004 AS `stu` SET stu.name = 'x', stu.score = stu.score + 1 WHERE stu.id = 12"
    );
    // DELETE and INSERT name the sub-table itself.
    let (_, _, sql) =
        single(&r.route("DELETE FROM tessera.stu WHERE tessera.stu.id = 12 AND stu.name = 'a'"));
    assert_eq!(
        sql,
        "DELETE FROM tessera.stu_0004 WHERE tessera.stu_0004.id = 12 AND stu_0004.name = 'a'"
    );
    // An INSERT keeps its database; qualified columns in it are refused
    // rather than sent with the logical name.
    let s = scatter(r.route("INSERT INTO tessera.stu (id, name) VALUES (1, 'a'), (2, 'b')"));
    assert_eq!(
        s.parts[1].sql,
        "INSERT INTO tessera.stu_0002 (id, name) VALUES (2, 'b')"
    );
    assert!(refused(&r.route(
        "INSERT INTO tessera.stu (stu.id, name) VALUES (1, 'a') ON DUPLICATE KEY UPDATE name = CONCAT(tessera.stu.name, stu.name)",
    ))
    .contains("Qualified column names"));
    // A changed key is found however it is qualified.
    assert!(
        refused(&r.route("UPDATE tessera.stu SET tessera.stu.id = 1 WHERE id = 2"))
            .contains("shard key")
    );
    // More than a database and a table cannot be a MariaDB table.
    assert!(refused(&r.route("SELECT * FROM a.b.stu WHERE id = 1")).contains("database"));
}

#[test]
fn select_star_with_hidden_columns_names_its_tables() {
    let r = router();
    let s = scatter(r.route("SELECT * FROM stu ORDER BY score LIMIT 3"));
    assert_eq!(
        s.parts[0].sql,
        "SELECT score, `stu`.* FROM stu_0000 AS `stu` ORDER BY score LIMIT 3"
    );
    let s = scatter(r.route(
        "SELECT * FROM stu JOIN countries c ON c.code = stu.cc WHERE stu.id < 9 ORDER BY c.name",
    ));
    assert!(
        s.parts[0]
            .sql
            .starts_with("SELECT c.name, `stu`.*, `c`.* FROM stu_0000 AS `stu` JOIN countries c"),
        "{}",
        s.parts[0].sql
    );
    assert!(
        refused(&r.route("SELECT * FROM stu JOIN countries USING (code) ORDER BY name"))
            .contains("USING")
    );
}

/// Found by the simulation (`TESSERA_SIM_SEED=293 cargo run -p tessera-sim
/// -- --tier 1 --seeds 1`): `BEGIN; INSERT …; COMMIT` in one query was taken
/// for a lone BEGIN (held back, then sent wherever the next statement went),
/// and `SELECT …; UPDATE …` went to a replica.
#[test]
fn several_statements_in_one_query_go_to_a_primary_as_one() {
    let r = router();
    let p = r.route("BEGIN; INSERT INTO t VALUES (1); COMMIT");
    assert_eq!(single(&p).1, Access::Write, "{p:?}");
    let p = r.route("SELECT 1; UPDATE t SET a = 1");
    assert_eq!(single(&p).1, Access::Write, "{p:?}");
    // One statement with a trailing `;` or comment is still one.
    assert_eq!(r.route("BEGIN;"), Plan::Begin);
    assert_eq!(r.route("COMMIT ; -- done"), Plan::Commit);
    assert_eq!(
        single(&r.route("SELECT ';' FROM t; /* c */")).1,
        Access::Read
    );
    assert_eq!(single(&r.route("SELECT 1 # ; x\n")).1, Access::Read);
}
