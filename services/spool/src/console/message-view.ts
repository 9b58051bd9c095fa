import { Buffer } from 'node:buffer';
import { simpleParser, type Attachment } from 'mailparser';
import sanitizeHtml from 'sanitize-html';

/**
 * A stored message as the console shows it: the header section as sent, the text, the HTML made
 * harmless, the attachments. The HTML is shown only inside a sandboxed frame that runs no script,
 * under a CSP that loads nothing but data: images (mailparser turns the message's own cid: images
 * into data: URLs); sanitizing is the first of those three walls, not the only one.
 */
export interface MessageView {
  headers: string;
  subject: string | null;
  text: string | null;
  html: string | null;
  attachments: Array<{ name: string; type: string; size: number; inline: boolean }>;
}

/** What may stay of a message's HTML: layout and text, links (opened outside), data: images. No script, style sheet, form, frame, meta, base, or remote anything. */
const POLICY: sanitizeHtml.IOptions = {
  allowedTags: [...sanitizeHtml.defaults.allowedTags, 'img', 'font', 'center', 'u', 's', 'strike', 'big', 'small'],
  allowedAttributes: {
    a: ['href', 'name', 'title', 'target', 'rel'],
    img: ['src', 'alt', 'title', 'width', 'height'],
    font: ['color', 'size', 'face'],
    table: ['width', 'border', 'cellpadding', 'cellspacing', 'align', 'bgcolor'],
    td: ['colspan', 'rowspan', 'align', 'valign', 'width', 'bgcolor'],
    th: ['colspan', 'rowspan', 'align', 'valign', 'width', 'bgcolor'],
    '*': ['style', 'align', 'dir', 'lang', 'title'],
  },
  allowedSchemes: ['http', 'https', 'mailto'],
  allowedSchemesByTag: { img: ['data'] },
  allowedSchemesAppliedToAttributes: ['href', 'src', 'cite', 'action', 'background', 'poster'],
  allowProtocolRelative: false,
  disallowedTagsMode: 'discard',
  transformTags: {
    '*': (tagName, attribs) => ({ tagName, attribs: withoutRemote(attribs) }),
    a: (tagName, attribs) => ({ tagName, attribs: { ...withoutRemote(attribs), target: '_blank', rel: 'noopener noreferrer' } }),
    img: (tagName, attribs) => {
      const { src, ...rest } = withoutRemote(attribs);
      return { tagName, attribs: src?.trim().toLowerCase().startsWith('data:') ? { ...rest, src } : rest };
    },
  },
};

/** CSS url(...) in a style attribute could fetch from anywhere: gone (the frame's CSP would block it too). */
function withoutRemote(attribs: sanitizeHtml.Attributes): sanitizeHtml.Attributes {
  if (attribs.style === undefined) return attribs;
  return { ...attribs, style: attribs.style.replace(/url\s*\([^)]*\)?/gi, 'none').replace(/@import|image-set\s*\(|expression\s*\(/gi, '') };
}

export function cleanHtml(html: string): string {
  return sanitizeHtml(html, POLICY);
}

/** The document the message frame loads (its own CSP comes with the response). */
export function frameDocument(cleaned: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><style>body{font:15px/1.45 system-ui,sans-serif;margin:12px;color:#111;background:#fff;word-wrap:break-word}img{max-width:100%;height:auto}</style></head><body>${cleaned}</body></html>`;
}

/** The header section exactly as stored (up to the first empty line), as text. */
export function headerSection(raw: Buffer): string {
  const text = raw.toString('utf8');
  const end = text.search(/\r?\n\r?\n/);
  return end < 0 ? text : text.slice(0, end);
}

const nameOf = (attachment: Attachment, index: number) => attachment.filename ?? `part-${index + 1}${attachment.contentType === 'message/rfc822' ? '.eml' : ''}`;

async function parsed(raw: Buffer) {
  return simpleParser(raw, { skipTextToHtml: true, maxHtmlLengthToParse: 10 * 1024 * 1024 });
}

export async function viewMessage(raw: Buffer): Promise<MessageView> {
  const mail = await parsed(raw);
  return {
    headers: headerSection(raw),
    subject: mail.subject ?? null,
    text: mail.text ?? null,
    html: typeof mail.html === 'string' ? cleanHtml(mail.html) : null,
    attachments: mail.attachments.map((attachment, index) => ({ name: nameOf(attachment, index), type: attachment.contentType, size: attachment.size, inline: attachment.related === true })),
  };
}

/** The n-th attachment's name and exact decoded bytes, or null. */
export async function attachmentOf(raw: Buffer, index: number): Promise<{ name: string; content: Buffer } | null> {
  const mail = await parsed(raw);
  const attachment = mail.attachments[index];
  return attachment ? { name: nameOf(attachment, index), content: attachment.content } : null;
}
