"""The shared login, better-auth compatible.

Sessions, passwords, cookies, the session cache, mail, rate limits, CSRF, /api/auth, CurrentUser.
"""
