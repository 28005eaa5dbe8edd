"""Failed sign-ins are counted in a real Redis and refused with 429 once too many."""

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def throttle(settings, redis_url):
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
        },
    }
    settings.LOUPE_LOGIN_FAILURES_PER_USER = 3
    settings.LOUPE_LOGIN_WINDOW_SECONDS = 60


def test_the_token_endpoint_refuses_after_too_many_wrong_passwords(throttle, make_user, client_for):
    make_user("tina")
    make_user("tom")
    api = client_for(None)
    for _ in range(2):
        assert (
            api.post("/api/auth/token/", {"username": "tina", "password": "x"}).status_code == 400
        )
    # a success clears the count: two more failures are still answered
    r = api.post("/api/auth/token/", {"username": "tina", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["token"]
    for _ in range(3):
        assert (
            api.post("/api/auth/token/", {"username": "TINA", "password": "x"}).status_code == 400
        )
    r = api.post("/api/auth/token/", {"username": "tina", "password": PASSWORD})
    assert r.status_code == 429, r.content  # even the right password, until the window ends
    assert "Too many failed attempts" in r.json()["error"]
    assert 0 < int(r["Retry-After"]) <= 60
    # another user from the same address is not locked out
    r = api.post("/api/auth/token/", {"username": "tom", "password": PASSWORD})
    assert r.status_code == 200


def test_the_login_page_refuses_after_too_many_wrong_passwords(throttle, make_user, client):
    make_user("lena")
    for _ in range(3):
        r = client.post("/login/", {"username": "lena", "password": "wrong"})
        assert r.status_code == 200 and "Wrong user name or password" in r.content.decode()
    r = client.post("/login/", {"username": "lena", "password": PASSWORD})
    assert r.status_code == 429
    page = r.content.decode()
    assert 'id="throttled"' in page and "Try again in 1 minute" in page
    assert "_auth_user_id" not in client.session


def test_without_redis_sign_in_still_works(settings, make_user, client_for, caplog):
    """An unreachable Redis must not lock a whole team out: the attempt is let through."""
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        },
    }
    make_user("nora")
    r = client_for(None).post("/api/auth/token/", {"username": "nora", "password": PASSWORD})
    assert r.status_code == 200
    assert "sign-in throttle unavailable" in caplog.text
