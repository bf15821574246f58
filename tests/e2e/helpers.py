"""What the browser tests share besides fixtures."""
import re


def log_in(page, server, username):
    """Log ``username`` (made by ``tests.conftest.make_user``) in through the login form of
    ``server`` (a ``tests.stack.Stack``), landing on the composer."""
    page.goto(server.url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"pw-{username}-123")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/compose/"))
