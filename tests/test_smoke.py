def test_login_page_renders(client, db):
    """The sign-in page answers without a session."""
    response = client.get("/accounts/login/")
    assert response.status_code == 200
