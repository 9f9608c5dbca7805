use super::*;
use riverbank_schemas::processor::Via;

#[test]
fn the_built_in_rule_set_is_valid() {
    let r = parse_rules(DEFAULT_RULES_TOML).expect("valid");
    assert!(r.version.starts_with("rs_") && r.version_matches());
}
