import { type FormEvent, useEffect, useId, useRef, useState } from 'react';
import { ApiRequestError, asApiRequestError } from '../api/errors';
import type { RestClient } from '../api/rest';
import type { AuthResponse } from '../protocol/generated/AuthResponse';
import { plural, sentence } from './format';

type Mode = 'login' | 'register';

/** The text for a failed login or registration, by error code (never by the server's wording alone). */
export function authErrorText(error: ApiRequestError, mode: Mode): string {
  switch (error.code) {
    case 'conflict':
      return 'That username is taken. Try another one.';
    case 'unauthorized':
      return 'Wrong username or password.';
    case 'validation':
    case 'bad_request':
      return sentence(error.message) || 'Check the username and password.';
    case 'rate_limited':
      return 'Too many attempts.';
    case 'network':
      return "Can't reach Warren. Check your connection and try again.";
    case 'unavailable':
    case 'timeout':
    case 'internal':
      return `Warren couldn't ${mode === 'login' ? 'log you in' : 'create your account'} right now. Try again in a moment.`;
    default:
      return sentence(error.message);
  }
}

export function AuthScreen({
  rest,
  onAuthenticated,
  notice,
  now = Date.now,
}: {
  rest: RestClient;
  onAuthenticated: (auth: AuthResponse) => void;
  /** Why the user is here (e.g. the session expired). */
  notice?: string | null;
  now?: () => number;
}) {
  const [mode, setMode] = useState<Mode>('login');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [showPassword, setShowPassword] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<{ text: string; retryAt?: number } | null>(null);
  const [, setTick] = useState(0);
  const usernameRef = useRef<HTMLInputElement>(null);
  const ids = { user: useId(), pass: useId(), userHint: useId(), passHint: useId(), error: useId() };

  const waitSeconds = error?.retryAt !== undefined ? Math.max(0, Math.ceil((error.retryAt - now()) / 1000)) : 0;

  // Count the rate-limit wait down once a second, and clear it when it is over.
  useEffect(() => {
    if (error?.retryAt === undefined) return;
    const timer = setInterval(() => setTick((t) => t + 1), 1_000);
    return () => clearInterval(timer);
  }, [error?.retryAt]);

  function switchMode(next: Mode) {
    setMode(next);
    setError(null);
    usernameRef.current?.focus();
  }

  async function onSubmit(event: FormEvent) {
    event.preventDefault();
    if (busy || waitSeconds > 0) return;
    if (!username.trim() || !password) {
      setError({ text: 'Enter a username and a password.' });
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const request = { username: username.trim(), password };
      const auth = mode === 'login' ? await rest.login(request) : await rest.register(request);
      onAuthenticated(auth);
    } catch (e) {
      const err = asApiRequestError(e);
      const retryAt =
        err instanceof ApiRequestError && err.code === 'rate_limited'
          ? now() + (err.retryAfterSeconds ?? 30) * 1000
          : undefined;
      setError({ text: authErrorText(err, mode), ...(retryAt !== undefined ? { retryAt } : {}) });
      setBusy(false);
    }
  }

  const registering = mode === 'register';
  const errorText = error
    ? error.retryAt !== undefined
      ? waitSeconds > 0
        ? `${error.text} Try again in ${plural(waitSeconds, 'second')}.`
        : `${error.text} You can try again now.`
      : error.text
    : '';

  return (
    <main className="auth">
      <div className="auth__card">
        <div className="auth__brand">
          <svg viewBox="0 0 64 64" width="44" height="44" aria-hidden="true">
            <rect width="64" height="64" rx="16" fill="var(--accent)" />
            <path d="M16 22c0-4 3-7 7-7h18c4 0 7 3 7 7v12c0 4-3 7-7 7H30l-9 8v-8h2c-4 0-7-3-7-7z" fill="#fff" />
          </svg>
          <span>Warren</span>
        </div>
        <h1>{registering ? 'Create your account' : 'Welcome back'}</h1>
        <p className="auth__lead">
          {registering ? 'Pick a username people can find you by.' : 'Log in to pick up where you left off.'}
        </p>
        {notice && (
          <p className="auth__notice" role="status">
            {notice}
          </p>
        )}
        <form onSubmit={onSubmit} noValidate aria-describedby={error ? ids.error : undefined}>
          <div className="field">
            <label htmlFor={ids.user}>Username</label>
            <input
              ref={usernameRef}
              id={ids.user}
              name="username"
              autoComplete="username"
              autoCapitalize="none"
              spellCheck={false}
              value={username}
              onChange={(e) => setUsername(e.target.value)}
              aria-describedby={registering ? ids.userHint : undefined}
              aria-invalid={error && !error.retryAt ? true : undefined}
              autoFocus
            />
            {registering && (
              <p id={ids.userHint} className="field__hint">
                3–32 characters: letters, digits, “_”, “.” and “-”.
              </p>
            )}
          </div>
          <div className="field">
            <label htmlFor={ids.pass}>Password</label>
            <div className="field__with-button">
              <input
                id={ids.pass}
                name="password"
                type={showPassword ? 'text' : 'password'}
                autoComplete={registering ? 'new-password' : 'current-password'}
                value={password}
                onChange={(e) => setPassword(e.target.value)}
                aria-describedby={registering ? ids.passHint : undefined}
                aria-invalid={error && !error.retryAt ? true : undefined}
              />
              <button
                type="button"
                className="field__toggle"
                onClick={() => setShowPassword((v) => !v)}
                aria-pressed={showPassword}
              >
                {showPassword ? 'Hide' : 'Show'}
                <span className="visually-hidden"> password</span>
              </button>
            </div>
            {registering && (
              <p id={ids.passHint} className="field__hint">
                At least 8 characters.
              </p>
            )}
          </div>
          <div id={ids.error} className="form-error" role="alert" aria-live="assertive">
            {errorText}
          </div>
          <button type="submit" className="button button--primary button--block" disabled={busy || waitSeconds > 0}>
            {busy ? (registering ? 'Creating account…' : 'Logging in…') : registering ? 'Create account' : 'Log in'}
          </button>
        </form>
        <p className="auth__switch">
          {registering ? 'Already have an account?' : 'New to Warren?'}{' '}
          <button type="button" className="link-button" onClick={() => switchMode(registering ? 'login' : 'register')}>
            {registering ? 'Log in' : 'Create an account'}
          </button>
        </p>
      </div>
    </main>
  );
}
