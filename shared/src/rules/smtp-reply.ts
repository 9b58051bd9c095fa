/** An SMTP reply we give or record: code, enhanced status code (RFC 3463) and text. */
export interface SmtpReply {
  code: number;
  status: string;
  text: string;
}

export function formatReply(reply: SmtpReply): string {
  return `${reply.code} ${reply.status} ${reply.text}`;
}

/** An Error that smtp-server turns into this exact reply (see ingress/smtp-replies.ts). */
export function replyError(reply: SmtpReply): Error & { responseCode: number } {
  return Object.assign(new Error(`${reply.status} ${reply.text}`), { responseCode: reply.code });
}
