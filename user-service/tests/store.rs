//! The user store against a real PostgreSQL, one fresh database per test.

mod support;

use std::collections::HashSet;

use support::{TestDb, some_hash, username};
use user_service::store::{MAX_PAGE_SIZE, StoreError, UserStore};

async fn store_with(db: &TestDb, names: &[&str]) -> UserStore {
    let store = UserStore::new(db.pool.clone());
    let hash = some_hash().await;
    for name in names {
        store.create(&username(name), &hash).await.expect("create user");
    }
    store
}

#[tokio::test]
async fn a_registered_user_can_be_found_by_id_and_by_name_in_any_case() {
    let db = TestDb::new().await;
    let store = UserStore::new(db.pool.clone());

    let created = store.create(&username("Alice"), &some_hash().await).await.unwrap();

    assert!(created.id > 0);
    assert_eq!(created.username, "Alice");
    assert_eq!(store.find_by_id(created.id).await.unwrap(), Some(created.clone()));
    assert_eq!(store.find_by_username(&username("aLiCe")).await.unwrap(), Some(created.clone()));
    assert_eq!(store.find_by_id(created.id + 1).await.unwrap(), None);
    assert_eq!(store.find_by_username(&username("bob")).await.unwrap(), None);
}

#[tokio::test]
async fn several_users_are_found_by_id_in_id_order_skipping_unknown_ones() {
    let db = TestDb::new().await;
    let store = store_with(&db, &["alice", "bob", "carol"]).await;
    let all = store.list(None, None, 10).await.unwrap().users;
    let (alice, carol) = (all[0].id, all[2].id);

    let found = store.find_by_ids(&[carol, 999_999, alice, carol]).await.unwrap();

    assert_eq!(found.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(), ["alice", "carol"]);
    assert!(store.find_by_ids(&[]).await.unwrap().is_empty());
    let too_many: Vec<i64> = (1..=i64::from(MAX_PAGE_SIZE) + 1).collect();
    assert!(matches!(store.find_by_ids(&too_many).await, Err(StoreError::TooManyIds { .. })));
}

#[tokio::test]
async fn registering_a_taken_name_in_other_case_is_a_conflict() {
    let db = TestDb::new().await;
    let store = store_with(&db, &["alice"]).await;

    let result = store.create(&username("ALICE"), &some_hash().await).await;

    assert!(matches!(result, Err(StoreError::UsernameTaken)), "{result:?}");
    assert_eq!(result.unwrap_err().to_string(), "username is already taken");
}

#[tokio::test]
async fn racing_registrations_of_one_name_let_exactly_one_win() {
    let db = TestDb::new().await;
    let store = UserStore::new(db.pool.clone());
    let hash = some_hash().await;

    let attempts = ["racer", "Racer", "RACER", "rAcEr"].map(|name| {
        let (store, hash) = (store.clone(), hash.clone());
        tokio::spawn(async move { store.create(&username(name), &hash).await })
    });
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::UsernameTaken) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }

    assert_eq!(won, 1);
}

#[tokio::test]
async fn credentials_carry_the_stored_hash_for_login() {
    let db = TestDb::new().await;
    let store = store_with(&db, &["alice"]).await;

    let credentials = store.find_credentials(&username("ALICE")).await.unwrap().unwrap();

    assert_eq!(credentials.username, "alice");
    assert_eq!(credentials.password_hash, some_hash().await);
    assert!(!format!("{credentials:?}").contains("argon2"), "Debug must redact the hash");
    assert!(store.find_credentials(&username("nobody")).await.unwrap().is_none());
}

#[tokio::test]
async fn listing_pages_through_every_user_once_in_id_order() {
    let db = TestDb::new().await;
    // Three exactly full pages: the last says no more follow.
    let names: Vec<String> = (0..30).map(|i| format!("user{i:02}")).collect();
    let store = store_with(&db, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(after, None, 10).await.unwrap();
        assert!(page.users.len() <= 10);
        after = page.users.last().map(|u| u.id);
        assert_eq!(page.more, seen.len() + page.users.len() < names.len(), "more after {} users", seen.len());
        seen.extend(page.users);
        if !page.more {
            break;
        }
    }

    let ids: Vec<i64> = seen.iter().map(|u| u.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids strictly increasing: {ids:?}");
    let seen_names: Vec<&str> = seen.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(seen_names, names);
}

#[tokio::test]
async fn a_page_is_never_larger_than_the_maximum_nor_empty_by_request() {
    let db = TestDb::new().await;
    let names: Vec<String> = (0..MAX_PAGE_SIZE + 5).map(|i| format!("u{i:03}")).collect();
    let store = store_with(&db, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;

    assert_eq!(store.list(None, None, u32::MAX).await.unwrap().users.len(), MAX_PAGE_SIZE as usize);
    assert_eq!(store.list(None, None, 0).await.unwrap().users.len(), 1);
}

#[tokio::test]
async fn prefix_search_ignores_case_and_pages_by_id() {
    let db = TestDb::new().await;
    let store = store_with(&db, &["Anna", "bob", "ANDREW", "annabel", "carl", "andy", "anne"]).await;

    let first = store.list(None, Some("aN"), 2).await.unwrap().users;
    let rest = store.list(first.last().map(|u| u.id), Some("AN"), 10).await.unwrap().users;

    let names: Vec<&str> = first.iter().chain(&rest).map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["Anna", "ANDREW", "annabel", "andy", "anne"]);
    let unique: HashSet<i64> = first.iter().chain(&rest).map(|u| u.id).collect();
    assert_eq!(unique.len(), 5);
}

#[tokio::test]
async fn underscore_in_a_prefix_matches_only_an_underscore() {
    let db = TestDb::new().await;
    let store = store_with(&db, &["a_b", "axb", "a_c", "a.b"]).await;

    let found = store.list(None, Some("a_"), 10).await.unwrap().users;

    let names: Vec<&str> = found.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["a_b", "a_c"]);
}

#[tokio::test]
async fn percent_and_backslash_in_a_prefix_match_nothing_rather_than_everything() {
    let db = TestDb::new().await;
    let store = store_with(&db, &["alice", "bob"]).await;

    for prefix in ["%", "a%", "\\", "a\\", "%_", "é", " a"] {
        assert!(store.list(None, Some(prefix), 10).await.unwrap().users.is_empty(), "prefix {prefix:?}");
    }
}

#[tokio::test]
async fn an_empty_prefix_lists_everyone() {
    let db = TestDb::new().await;
    let store = store_with(&db, &["alice", "bob"]).await;

    assert_eq!(store.list(None, Some(""), 10).await.unwrap().users.len(), 2);
}

#[tokio::test]
async fn the_database_refuses_names_the_domain_would_refuse() {
    let db = TestDb::new().await;

    let result = sqlx::query("INSERT INTO users.users (username, password_hash) VALUES ('bad name', '$argon2id$x')")
        .execute(&db.pool)
        .await;

    assert!(result.is_err(), "CHECK constraint must refuse a name with a space");
}

#[tokio::test]
async fn user_records_never_carry_the_password_hash() {
    let db = TestDb::new().await;
    let store = store_with(&db, &["alice"]).await;
    let hash = some_hash().await;

    let created = store.find_by_username(&username("alice")).await.unwrap().unwrap();
    let listed = store.list(None, None, 10).await.unwrap().users;

    // `UserRecord` has no hash field (a compile-time fact); make sure nothing smuggles it in through a string.
    for record in std::iter::once(&created).chain(&listed) {
        let printed = format!("{record:?}");
        assert!(!printed.contains(hash.as_str()) && !printed.contains("argon2"), "{printed}");
    }
}

#[tokio::test]
async fn the_services_pool_commits_durably_even_where_the_server_default_is_relaxed() {
    let db = TestDb::new().await;
    sqlx::query(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let pool = user_service::startup::connect(&db.url(), 1).await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&pool).await.unwrap();

    assert_eq!(setting, "on");
    pool.close().await;
}
