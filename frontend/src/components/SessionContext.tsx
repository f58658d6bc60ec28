import { createContext, useContext } from 'react';
import { useStore } from 'zustand';
import type { ChatSession } from '../state/session';
import type { ChatState } from '../state/store';

export const SessionContext = createContext<ChatSession | null>(null);

export function useSession(): ChatSession {
  const session = useContext(SessionContext);
  if (!session) throw new Error('useSession outside <SessionContext.Provider>');
  return session;
}

/** Subscribes to one slice of the chat store; return stored values (not new arrays) so React can skip renders. */
export function useChat<T>(selector: (state: ChatState) => T): T {
  return useStore(useSession().store, selector);
}
