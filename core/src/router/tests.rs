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
fn router_is_cheap_to_share() {
    let r = Arc::new(router());
    let r2 = r.clone();
    assert_eq!(r2.default_node(), 0);
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
    let s = scatter(r.route(
        "INSERT INTO tessera.stu (stu.id, name) VALUES (1, 'a'), (2, 'b') ON DUPLICATE KEY UPDATE name = CONCAT(tessera.stu.name, stu.name)",
    ));
    assert_eq!(
        s.parts[1].sql,
        "INSERT INTO tessera.stu_0002 (stu_0002.id, name) VALUES (2, 'b') ON DUPLICATE KEY UPDATE name = CONCAT(tessera.stu_0002.name, stu_0002.name)"
    );
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
